"""The enhancer: per-image independence, gradients, neutral ops, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, load_enhancer, save_enhancer
from dyntta.enhancer.ops import OPS


def _perturbed_enhancer(seed: int = 0) -> DynTTAEnhancer:
    """An enhancer whose predictor is far from its identity initialisation, so every branch is active."""
    torch.manual_seed(seed)
    model = DynTTAEnhancer(EnhancerConfig(input_size=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_output_shape_range_and_identity_start(fmnist_test) -> None:
    x = fmnist_test.images[:8].float() / 255
    fresh = DynTTAEnhancer().eval()
    y = fresh(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    weights, magnitudes = fresh.blend_parameters(x)
    assert torch.allclose(weights.sum(1), torch.ones(8))
    assert weights[:, 0].min() > 0.5  # starts mostly as the identity op
    uniform = DynTTAEnhancer(EnhancerConfig(identity_logit=0.0)).eval()  # no preference for the identity
    assert (y - x).abs().mean() < 0.5 * (uniform(x) - x).abs().mean()


def test_per_image_independence(fmnist_test) -> None:
    """An image's output is the same alone and inside any batch (Triton merges clients' requests)."""
    model = _perturbed_enhancer()
    x = fmnist_test.images[:16].float() / 255
    with torch.no_grad():
        batch = model(x)
        shuffled = model(x.flip(0)).flip(0)
        for i in (0, 7, 15):
            alone = model(x[i : i + 1])
            assert torch.allclose(alone[0], batch[i], atol=1e-5)
        mixed = model(torch.cat([x[:4], torch.rand(4, 3, 32, 32), x[4:8]]))
    assert torch.allclose(shuffled, batch, atol=1e-5)
    assert torch.allclose(mixed[:4], batch[:4], atol=1e-5)


def test_gradients_reach_predictor_and_unet(fmnist_test) -> None:
    model = _perturbed_enhancer().train()
    x = fmnist_test.images[:8].float() / 255
    model(x).square().mean().backward()
    for name in ("predictor.features.0.0.weight", "predictor.head.2.weight", "unet.encode.0.weight", "unet.out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("op", [op for op in OPS if op.parameterised], ids=lambda op: op.name)
def test_parameterised_ops_are_identity_at_zero_magnitude(op, fmnist_test) -> None:
    x = fmnist_test.images[:4].float() / 255
    y = op.fn(x, torch.zeros(4))
    assert (y - x).abs().max() < 2e-3, op.name


@pytest.mark.parametrize("op", [op for op in OPS if op.parameterised], ids=lambda op: op.name)
def test_parameterised_ops_change_the_image_away_from_zero(op) -> None:
    x = torch.rand(2, 3, 32, 32) * 0.5 + 0.25
    x[:, 1] = x[:, 0] * 0.5  # some colour so hue and saturation act
    assert (op.fn(x, torch.full((2,), 1.0)) - x).abs().mean() > 1e-3, op.name


def test_frequency_filter_all_pass_and_low_pass() -> None:
    model = DynTTAEnhancer()
    x = torch.rand(3, 3, 32, 32)
    bands = model.frequency.num_bands
    lowpass = torch.zeros(3, bands)
    highpass = torch.zeros(3, bands)
    lowpass[:, 5] = 1.0
    highpass[:, 5] = 1.0  # LPF_r + HPF_r with the same r is the identity
    assert torch.allclose(model.frequency(x, lowpass, highpass), x, atol=1e-4)
    smooth = model.frequency(x, lowpass, torch.zeros(3, bands))  # low-pass only: less high-frequency energy
    assert (smooth[..., 1:] - smooth[..., :-1]).abs().mean() < 0.5 * (x[..., 1:] - x[..., :-1]).abs().mean()


def test_served_onnx_graph_matches_pytorch(tmp_path, fmnist_test) -> None:
    """The graph Triton serves, exported by ``export.onnx`` (uint8 NHWC in and out, scaling and rounding in
    the graph), against the PyTorch enhancer at several batch sizes."""
    from export.onnx import (
        ENHANCED_IMAGE,
        IMAGE,
        EnhancerForServing,
        Tolerance,
        cpu_session,
        enhancer_parity,
        export_module,
        to_nhwc_uint8,
    )

    model = _perturbed_enhancer(1)
    served = EnhancerForServing(model).eval()
    path = export_module(served, tmp_path / "enhancer.onnx", 32, ENHANCED_IMAGE)
    images = to_nhwc_uint8(fmnist_test.images[:8])
    session = cpu_session(path)
    for n in (1, 3, 8):
        got = session.run([ENHANCED_IMAGE], {IMAGE: images[:n]})[0]
        with torch.no_grad():
            want = model(fmnist_test.images[:n].float() / 255).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1)
        assert got.dtype == np.uint8 and got.shape == (n, 32, 32, 3)
        assert np.abs(got.astype(np.int16) - want.numpy().astype(np.int16)).max() <= 1  # one level: rounding
    assert (got != images).any()  # the perturbed enhancer changes the image, so the check has teeth
    assert enhancer_parity(served, path, images, Tolerance()).passed


def test_checkpoint_round_trip(tmp_path, fmnist_test) -> None:
    model = _perturbed_enhancer(2)
    save_enhancer(model, tmp_path / "enh", metrics={"note": 1.0})
    loaded = load_enhancer(tmp_path / "enh")
    x = fmnist_test.images[:4].float() / 255
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
