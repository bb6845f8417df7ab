"""``--augment auto``: the strongest geometric augmentation the frozen recognizer is invariant to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyntta.train.augment import MIN_AGREEMENT, choose_augmentation


class Brightness(nn.Module):
    """Dark or bright: invariant to flips, and to a 4-pixel zero-padded crop of images far from the boundary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([mean, 1.0 - mean], dim=1)


class LeftOrRight(nn.Module):
    """Which half is brighter: a flip changes its answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.stack([x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))], dim=1)


def _images(n: int = 128, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=generator) * 0.2
    images[: n // 2] += 0.7  # half bright, half dark
    bright_left = torch.arange(n) % 2 == 0
    images[bright_left, :, :, : size // 2] += 0.1
    images[~bright_left, :, :, size // 2 :] += 0.1
    return images.clamp(0, 1)


def test_auto_keeps_crop_and_flip_for_an_invariant_recognizer() -> None:
    choice = choose_augmentation("auto", Brightness(), _images(), 32)
    assert choice.name == "crop-flip" and choice.agreement["crop-flip"] >= MIN_AGREEMENT
    assert choice.describe().startswith("crop-flip (auto")


def test_auto_drops_what_changes_the_recognizer_answer() -> None:
    choice = choose_augmentation("auto", LeftOrRight(), _images(), 32)
    assert choice.name == "none"
    assert choice.agreement["flip"] < MIN_AGREEMENT and choice.agreement["crop-flip"] < MIN_AGREEMENT


def test_auto_is_deterministic_and_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = choose_augmentation("auto", LeftOrRight(), _images(), 32, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a == choose_augmentation("auto", LeftOrRight(), _images(), 32, seed=3)


def test_an_explicit_choice_is_taken_and_a_wrong_one_refused() -> None:
    assert choose_augmentation("flip", LeftOrRight(), _images(), 32).name == "flip"
    with pytest.raises(ValueError, match="--augment must be one of"):
        choose_augmentation("rotate", LeftOrRight(), _images(), 32)
