"""The enhancer: per-image independence, gradients, neutral ops, ONNX parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
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


def test_onnx_export_matches_pytorch(tmp_path, fmnist_test) -> None:
    model = _perturbed_enhancer(1)
    x = fmnist_test.images[:8].float() / 255
    path = tmp_path / "enhancer.onnx"
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["pixels"],
        output_names=["enhanced"],
        dynamic_axes={"pixels": {0: "batch"}, "enhanced": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3, 8):
        got = session.run(None, {"pixels": x[:n].numpy()})[0]
        with torch.no_grad():
            want = model(x[:n]).numpy()
        assert np.abs(got - want).max() < 1e-4


def test_checkpoint_round_trip(tmp_path, fmnist_test) -> None:
    model = _perturbed_enhancer(2)
    save_enhancer(model, tmp_path / "enh", metrics={"note": 1.0})
    loaded = load_enhancer(tmp_path / "enh")
    x = fmnist_test.images[:4].float() / 255
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
