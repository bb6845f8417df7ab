"""Which corruptions an enhancer is fitted on: --train-corruptions / --exclude-corruptions (leave one family
out), and that the sampler only ever applies those."""

from __future__ import annotations

import pytest
import torch

from dyntta.corruptions import BENCHMARK_NAMES, GROUPS
from dyntta.train.corruption_augment import RandomCorruption, sample_conditions
from dyntta.train.enhancer import training_corruptions


def test_default_is_the_15_benchmark_corruptions() -> None:
    assert training_corruptions(["core"]) == tuple(BENCHMARK_NAMES)


def test_leaving_one_family_out() -> None:
    kept = training_corruptions(["core"], ["noise"])
    assert set(kept) == set(BENCHMARK_NAMES) - set(GROUPS["noise"])
    assert training_corruptions(["core", "extra"], ["fog", "blur"]) == tuple(
        n for n in (*BENCHMARK_NAMES, *GROUPS["extra"]) if n != "fog" and n not in GROUPS["blur"]
    )


def test_nothing_left_or_a_typo_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="leaves no corruption"):
        training_corruptions(["noise"], ["noise"])
    with pytest.raises(ValueError, match="gaussian_noise"):
        training_corruptions(["gausian_noise"])


def test_the_sampler_draws_only_the_given_corruptions() -> None:
    names = training_corruptions(["core"], ["noise", "weather"])
    which, severity = sample_conditions(4000, 1.0, torch.Generator().manual_seed(0), names)
    assert set(which.tolist()) == set(range(len(names)))  # every kept one, nothing else
    assert set(severity.tolist()) == {1, 2, 3, 4, 5}
    images = torch.full((4, 3, 32, 32), 0.5)
    torch.manual_seed(0)
    assert RandomCorruption(1.0, ["contrast"])(images).shape == images.shape
    with pytest.raises(ValueError, match="no corruptions"):
        RandomCorruption(1.0, [])
