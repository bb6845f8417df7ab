"""Digital corruptions against the library operations the reference uses."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dyntta.corruptions import _ops, corrupt, digital
from dyntta.corruptions.tables import CIFAR


def _u8(x: torch.Tensor) -> np.ndarray:
    return torch.round(x * 255).to(torch.uint8).permute(1, 2, 0).numpy()


def test_contrast_keeps_channel_means(small: torch.Tensor) -> None:
    out = corrupt(small, "contrast", 5)
    torch.testing.assert_close(out.mean(dim=(2, 3)), small.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    assert float(out.std()) < float(small.std())


def test_saturate_matches_skimage_hsv(small: torch.Tensor) -> None:
    color = pytest.importorskip("skimage.color")
    x = small[:3].double()
    x[0, :, :4, :4] = 0.5  # grey pixels turn reddish, as in the reference
    for severity, (a, b) in enumerate(CIFAR["saturate"], start=1):
        ours = corrupt(x, "saturate", severity).permute(0, 2, 3, 1).numpy()
        for i, image in enumerate(x.permute(0, 2, 3, 1).numpy()):
            hsv = color.rgb2hsv(image)
            hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0, 1)
            assert np.abs(ours[i] - np.clip(color.hsv2rgb(hsv), 0, 1)).max() < 1e-6  # float32 inside


def test_jpeg_matches_pillow(small: torch.Tensor) -> None:
    quality = CIFAR["jpeg_compression"][4]
    ours = corrupt(small[:2], "jpeg_compression", 5)
    for i in range(2):
        buffer = io.BytesIO()
        Image.fromarray(_u8(small[i])).save(buffer, "JPEG", quality=quality)
        ref = np.asarray(Image.open(buffer))
        assert np.array_equal(_u8(ours[i]), ref)


def test_pixelate_matches_pillow_box(small: torch.Tensor) -> None:
    for severity, factor in enumerate(CIFAR["pixelate"], start=1):
        ours = corrupt(small[:1], "pixelate", severity)[0]
        image = Image.fromarray(_u8(small[0]))
        side = int(32 * factor)
        ref = np.asarray(image.resize((side, side), Image.BOX).resize((32, 32), Image.BOX)).astype(float)
        assert np.abs(_u8(ours).astype(float) - ref).max() <= 1  # Pillow rounds to uint8 in between


def test_pil_resample_matrices_are_exact() -> None:
    rng = np.random.default_rng(0)
    for n_in, n_out in ((224, 134), (32, 20), (20, 32), (134, 224)):
        a = rng.random((n_in, n_in)).astype(np.float32)
        ref = np.asarray(Image.fromarray(a, mode="F").resize((n_out, n_out), Image.BOX))
        ours = _ops.pil_resize(torch.from_numpy(a)[None, None].double(), (n_out, n_out), "box")[0, 0]
        assert np.abs(ours.numpy() - ref).max() < 1e-6


def test_elastic_first_cifar_severity_is_a_pure_affine_warp() -> None:
    x = torch.rand(2, 3, 32, 32)
    out = corrupt(x, "elastic_transform", 1)  # alpha = sigma = 0: no displacement field
    assert 0 < float((out - x).abs().mean()) < 0.5
    flat = torch.full((1, 3, 32, 32), 0.25)
    torch.testing.assert_close(corrupt(flat, "elastic_transform", 4), flat, atol=1e-5, rtol=0)


def test_jpeg_pillow_fallback_gives_the_codec_bytes(small, monkeypatch) -> None:
    # torchvision's JPEG codecs are deprecated; without them the Pillow path must produce the same images
    with_codecs = corrupt(small, "jpeg_compression", 3)
    monkeypatch.setattr(digital, "_torchvision_jpeg", lambda: None)
    assert torch.equal(corrupt(small, "jpeg_compression", 3), with_codecs)
