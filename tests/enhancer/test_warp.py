"""The output warp: identity at zero, undoes a geometric shift, trains, exports, round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, load_enhancer, save_enhancer
from dyntta.enhancer.warp import MAX_ANGLE, WARP_PARAMETERS, sample_affine, warp, warp_matrix


def _images(fmnist_test, n: int = 8) -> torch.Tensor:
    return fmnist_test.images[:n].float() / 255


def _rotation(angle: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = math.cos(angle), math.sin(angle)
    return torch.tensor([[cos, -sin], [sin, cos]]).expand(n, 2, 2), torch.zeros(n, 2)


def test_zero_parameters_are_the_identity(fmnist_test) -> None:
    x = _images(fmnist_test)
    assert torch.allclose(warp(x, torch.zeros(len(x), WARP_PARAMETERS)), x, atol=1e-5)
    a, t = warp_matrix(torch.zeros(2, WARP_PARAMETERS))
    assert torch.equal(a, torch.eye(2).expand(2, 2, 2)) and torch.equal(t, torch.zeros(2, 2))


def test_a_new_warping_enhancer_starts_as_the_enhancer_without_it(fmnist_test) -> None:
    x = _images(fmnist_test)
    torch.manual_seed(0)
    plain = DynTTAEnhancer(EnhancerConfig()).eval()
    torch.manual_seed(0)
    warping = DynTTAEnhancer(EnhancerConfig(warp=True)).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), warping(x), atol=1e-5)


def test_the_warp_undoes_a_rotation(fmnist_test) -> None:
    """Rotate by 30 degrees; the warp with the opposite angle brings the image back (up to bilinear blur
    and the corners the rotation cut off), far closer than the rotated image is."""
    x = _images(fmnist_test)
    rotated = sample_affine(x, *_rotation(math.radians(30.0), len(x)))
    m = torch.zeros(len(x), WARP_PARAMETERS)
    m[:, 0] = math.atanh(-math.radians(30.0) / MAX_ANGLE)
    restored = warp(rotated, m)
    centre = (slice(None), slice(None), slice(6, 26), slice(6, 26))
    error, before = (restored - x)[centre].abs().mean(), (rotated - x)[centre].abs().mean()
    assert error < 0.25 * before, (error, before)


def test_gradients_reach_the_warp_parameters(fmnist_test) -> None:
    x = _images(fmnist_test, 4)
    enhancer = DynTTAEnhancer(EnhancerConfig(warp=True)).train()
    with torch.no_grad():  # off the identity, so the warp's Jacobian is not degenerate at the zero-fill edge
        enhancer.predictor.head[-1].bias[-WARP_PARAMETERS:] = 0.3
    (enhancer(x) * torch.linspace(0, 1, 32)).sum().backward()
    last = enhancer.predictor.head[-1]
    assert last.bias.grad is not None and last.bias.grad[-WARP_PARAMETERS:].abs().min() > 0


def _perturbed_warping_enhancer(seed: int) -> DynTTAEnhancer:
    torch.manual_seed(seed)
    model = DynTTAEnhancer(EnhancerConfig(warp=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_served_onnx_graph_matches_pytorch_with_the_warp(tmp_path, fmnist_test) -> None:
    from export.onnx import ENHANCED_IMAGE, IMAGE, EnhancerForServing, cpu_session, export_module, to_nhwc_uint8

    model = _perturbed_warping_enhancer(3)
    x = _images(fmnist_test)
    with torch.no_grad():
        warp_parameters = model.blend_parameters(x)[1][:, -WARP_PARAMETERS:]
    assert warp_parameters.abs().min() > 0.01  # the warp is really in use
    path = export_module(EnhancerForServing(model).eval(), tmp_path / "enhancer.onnx", 32, ENHANCED_IMAGE)
    session = cpu_session(path)
    images = to_nhwc_uint8(fmnist_test.images[:8])
    for n in (1, 8):
        got = session.run([ENHANCED_IMAGE], {IMAGE: images[:n]})[0]
        with torch.no_grad():
            want = model(x[:n]).clamp(0, 1).mul(255).round().permute(0, 2, 3, 1).numpy()
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1


def test_checkpoint_round_trip_keeps_the_warp(tmp_path, fmnist_test) -> None:
    model = _perturbed_warping_enhancer(4)
    loaded = load_enhancer(save_enhancer(model, tmp_path / "enhancer"))
    assert loaded.config.warp and loaded.num_warp == WARP_PARAMETERS
    x = _images(fmnist_test, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_the_alignment_loss_teaches_the_warp_to_undo_a_rotation(fmnist_test) -> None:
    """``--warp-alignment``'s term alone, on images rotated by 25 degrees: a few dozen predictor steps find the
    opposite angle (the recognizer's loss alone left fitted warps at the identity) and the loss drops."""
    x = _images(fmnist_test)
    rotated = sample_affine(x, *_rotation(math.radians(25.0), len(x)))
    torch.manual_seed(0)
    enhancer = DynTTAEnhancer(EnhancerConfig(warp=True)).train()
    optimizer = torch.optim.Adam(enhancer.predictor.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(enhancer.warp_input(rotated), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        _, magnitudes = enhancer.blend_parameters(rotated)
    angle = math.degrees(MAX_ANGLE) * torch.tanh(magnitudes[:, -WARP_PARAMETERS]).mean().item()
    assert losses[-1] < 0.2 * losses[0], losses
    assert abs(angle + 25.0) < 5.0, angle


def test_warp_input_needs_a_warp(fmnist_test) -> None:
    with pytest.raises(ValueError, match="no output warp"):
        DynTTAEnhancer(EnhancerConfig()).warp_input(_images(fmnist_test, 2))
