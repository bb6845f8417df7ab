"""The preprocessing policy (issue 16 item 3): a 3:1 image is not squashed under center-crop or letterbox,
pixel for pixel against numpy slicing; the legacy resize is unchanged; the policy round-trips as JSON; the
torch-free contract keeps torch out of the gateway process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dyntta.data import CENTER_CROP, RESIZE, Preprocess, to_model_input
from dyntta.data.preprocess import RESAMPLE

RNG = np.random.default_rng(16)


def _wide(height: int) -> np.ndarray:
    """A 3:1 RGB image of random pixels."""
    return RNG.integers(0, 256, (height, 3 * height, 3), dtype=np.uint8)


def test_center_crop_keeps_the_centred_square_of_a_wide_image() -> None:
    pixels = _wide(32)  # the shorter side is already the model's: no resampling, only the crop
    out = to_model_input(Image.fromarray(pixels), 32, CENTER_CROP)
    np.testing.assert_array_equal(out, pixels[:, 32:64])
    # crop_pct 0.5 of a 64 px shorter side: the centred 32 px square, again at scale 1
    taller = _wide(64)
    out = to_model_input(Image.fromarray(taller), 32, Preprocess("center_crop", crop_pct=0.5))
    np.testing.assert_array_equal(out, taller[16:48, 80:112])


def test_center_crop_of_a_tall_image_and_a_resampled_crop() -> None:
    pixels = np.ascontiguousarray(_wide(20).transpose(1, 0, 2))  # 1:3, 60 x 20
    out = to_model_input(Image.fromarray(pixels), 20, Preprocess("center-crop"))
    np.testing.assert_array_equal(out, pixels[20:40])
    # at a smaller size the crop is resampled: nearest at scale 2 takes the pixel at 2x + 1 of the crop
    out = to_model_input(Image.fromarray(pixels), 10, Preprocess("center_crop", interpolation="nearest"))
    np.testing.assert_array_equal(out, pixels[20:40][1::2, 1::2])


def test_letterbox_pads_instead_of_squashing() -> None:
    pixels = _wide(30)  # 90 x 30 -> content 30 x 10, centred in rows 10..19
    policy = Preprocess("letterbox", interpolation="nearest", fill=(7, 8, 9))
    out = to_model_input(Image.fromarray(pixels), 30, policy)
    expected = np.empty((30, 30, 3), np.uint8)
    expected[:] = (7, 8, 9)
    expected[10:20] = pixels[1::3, 1::3]  # nearest at scale 3 samples the middle pixel of each 3 x 3 cell
    np.testing.assert_array_equal(out, expected)


def test_resize_is_the_legacy_squash_and_square_images_agree() -> None:
    pixels = _wide(12)
    legacy = np.asarray(Image.fromarray(pixels).resize((32, 32), RESAMPLE))
    np.testing.assert_array_equal(to_model_input(Image.fromarray(pixels), 32), legacy)
    np.testing.assert_array_equal(to_model_input(Image.fromarray(pixels), 32, RESIZE), legacy)
    square = RNG.integers(0, 256, (28, 28), dtype=np.uint8)  # Fashion-MNIST: every policy, the same pixels
    want = to_model_input(Image.fromarray(square), 32, RESIZE)
    for policy in (CENTER_CROP, Preprocess("letterbox")):
        np.testing.assert_array_equal(to_model_input(Image.fromarray(square), 32, policy), want)


def test_policy_round_trips_through_json_and_rejects_nonsense() -> None:
    policy = Preprocess("letterbox", crop_pct=0.875, interpolation="bicubic", fill=(1, 2, 3))
    assert Preprocess.from_json(policy.to_json()) == policy
    assert Preprocess.from_dict(policy.to_dict()) == policy
    assert Preprocess.from_json(None) == Preprocess.from_json("") == Preprocess.from_dict({}) == RESIZE
    for bad in ('{"mode": "stretch"}', '{"crop_pct": 0}', '{"crop_pct": 1.5}', '{"fill": [0, 0]}', "[1]", "{"):
        with pytest.raises(ValueError):
            Preprocess.from_json(bad)
    with pytest.raises(ValueError, match="unknown preprocessing field"):
        Preprocess.from_dict({"mode": "resize", "colour": 3})


def test_the_gateway_and_the_contract_import_no_torch() -> None:
    """``serve.app`` (and with it serve.imaging, dyntta.data's contract) loads without torch (issue 15)."""
    code = "import sys, serve.app, serve.client, dyntta.data; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
