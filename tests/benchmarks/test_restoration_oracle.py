"""The restoration candidates of the oracle check (benchmarks/restoration_oracle.py) do what they are named for."""

from __future__ import annotations

import torch

from benchmarks.restoration_oracle import lee, local_wiener, wiener_deconvolution
from dyntta.corruptions import corrupt
from dyntta.data import LabelledImages, to_float


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def test_wiener_deconvolution_undoes_the_suites_gaussian_blur(fmnist_test: LabelledImages) -> None:
    clean = to_float(fmnist_test.images[:16])
    blurred = corrupt(clean, "gaussian_blur", 5, seed=0)  # sigma 1 px at 32 px (the CIFAR table)
    assert _error(wiener_deconvolution(clean, 0.0), clean) < 1e-5  # sigma 0: the identity
    restored = wiener_deconvolution(blurred, 1.0)
    assert _error(restored, clean) < 0.6 * _error(blurred, clean)


def test_noise_adaptive_filters_are_the_identity_without_noise_and_smooth_it_away() -> None:
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((2, 3, 32, 32), 0.6)
    sigma = 0.1
    additive = flat + sigma * torch.randn(flat.shape, generator=generator)
    multiplicative = flat * (1 + sigma * torch.randn(flat.shape, generator=generator))
    for restore, noisy in ((local_wiener, additive), (lee, multiplicative)):
        assert _error(restore(noisy, 0.0), noisy) < 1e-6, restore.__name__
        assert restore(noisy, sigma).std() < 0.5 * noisy.std(), restore.__name__
