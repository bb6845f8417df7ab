"""Shared images for the corruption tests: real Fashion-MNIST at 32 px, tinted so colour operations have
colour to work on, and two 224 px images upsampled from them."""

from __future__ import annotations

from functools import cache, lru_cache

import pytest
import torch
import torch.nn.functional as F

from dyntta.corruptions import corrupt
from dyntta.data import load_dataset


@lru_cache(maxsize=1)
def small_images() -> torch.Tensor:
    """6 Fashion-MNIST test images (32 px, [0, 1]) with a per-image colour tint and a soft background."""
    grey = load_dataset("fashion-mnist", "test").images[:6].float() / 255
    tint = torch.tensor(
        [[1.0, 0.6, 0.3], [0.3, 0.8, 1.0], [0.9, 0.9, 0.2], [0.5, 1.0, 0.5], [1.0, 0.4, 0.8], [1.0, 1.0, 1.0]]
    )[:, :, None, None]
    ramp = torch.linspace(0.1, 0.4, 32)[None, None, None, :]
    return (grey * tint * 0.8 + ramp * (1 - grey)).clamp(0, 1)


@lru_cache(maxsize=1)
def large_images() -> torch.Tensor:
    return F.interpolate(small_images()[:2], size=224, mode="bilinear", align_corners=False).clamp(0, 1)


@cache
def batch_output(size: int, name: str, severity: int) -> torch.Tensor:
    """corrupt() of the whole test batch, memoised so several tests can share one (slow at 224 px) call."""
    images = small_images() if size == 32 else large_images()
    return corrupt(images, name, severity, seed=0)


@pytest.fixture(scope="session")
def small() -> torch.Tensor:
    return small_images()


@pytest.fixture(scope="session")
def large() -> torch.Tensor:
    return large_images()
