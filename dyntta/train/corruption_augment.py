"""Training-time corruption sampling for the enhancer.

Non-blind (DynTTA/URIE recipe): each image is corrupted with probability 15/16 by one of the 15 benchmark
corruptions (or the ``names`` given: e.g. all but one family, for leave-one-family-out fitting) at a
uniformly drawn severity 1-5, otherwise left clean. ``names`` may also hold novel shifts of
:mod:`dyntta.shifts` (``--train-shifts``): the draw is uniform over the whole list. Blind: AugMix-style chains of
torchvision augmentations on clean images only (no benchmark corruption is seen). Mixed
(``--augmix-probability``): each image takes AugMix with that probability, else the non-blind draw, so the
enhancer also meets shifts outside the corruption list it is trained on. Composed
(``--compose-probability``): each image takes two draws from the list in sequence with that probability
(``EitherShift`` of one ``RandomCorruption`` and two in a row), a broader distribution from the same list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from dyntta.corruptions import BENCHMARK_NAMES, SEVERITIES, corrupt
from dyntta.data import LabelledImages, to_float
from dyntta.shifts import NOVEL_SHIFTS, shift


def sample_conditions(
    n: int, probability: float, generator: torch.Generator | None = None, names: Sequence[str] = BENCHMARK_NAMES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: a corruption index into ``names`` (-1 = clean) and a severity."""
    corrupted = torch.rand(n, generator=generator) < probability
    which = torch.randint(len(names), (n,), generator=generator)
    severity = torch.randint(min(SEVERITIES), max(SEVERITIES) + 1, (n,), generator=generator)
    return torch.where(corrupted, which, torch.full_like(which, -1)), severity


def distort(images: torch.Tensor, name: str, severity: int, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """Corruption or novel shift ``name`` (the two name sets are disjoint), each keyed per (seed, image index)
    by its own module, so a novel shift is as deterministic as a corruption."""
    if name in NOVEL_SHIFTS:
        return shift(images, name, severity, seed=seed, indices=indices)
    return corrupt(images, name, severity, seed=seed, indices=indices)


def apply_conditions(
    images: torch.Tensor,
    which: torch.Tensor,
    severity: torch.Tensor,
    seed: int,
    indices: torch.Tensor,
    names: Sequence[str] = BENCHMARK_NAMES,
) -> torch.Tensor:
    """Corrupt each image with its own (corruption or novel shift, severity); one batched call per pair."""
    out = images.clone()
    for c, s in torch.unique(torch.stack([which, severity], 1), dim=0).tolist():
        if c < 0:
            continue
        mask = (which == c) & (severity == s)
        out[mask] = distort(images[mask], names[c], int(s), seed, indices[mask])
    return out


class RandomCorruption(nn.Module):
    """Corrupt a float batch in place of a data augmentation (draws from torch's global RNG)."""

    def __init__(self, probability: float = 15 / 16, names: Sequence[str] = BENCHMARK_NAMES) -> None:
        super().__init__()
        if not names:
            raise ValueError("no corruptions to train on")
        self.probability = probability
        self.names = tuple(names)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        which, severity = sample_conditions(len(images), self.probability, names=self.names)
        seed = int(torch.randint(2**31 - 1, (1,)))
        indices = torch.arange(len(images))
        return apply_conditions(images.cpu(), which, severity, seed, indices, self.names).to(images.device)


class RandomAugMix(nn.Module):
    """AugMix (torchvision, severity 5 as in DynTTA's blind setting), drawn independently per image."""

    def __init__(self) -> None:
        super().__init__()
        self.augmix = v2.AugMix(severity=5, mixture_width=3, chain_depth=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        as_bytes = (images * 255).round().to(torch.uint8).cpu()
        mixed = torch.stack([self.augmix(image) for image in as_bytes])  # AugMix draws one chain per call
        return to_float(mixed).to(images.device)


class EitherShift(nn.Module):
    """Per image: ``second`` with probability ``probability``, else ``first`` (draws from torch's global RNG)."""

    def __init__(self, first: nn.Module, second: nn.Module, probability: float) -> None:
        super().__init__()
        if not 0 <= probability <= 1:
            raise ValueError(f"need a probability in [0, 1], got {probability}")
        self.first, self.second, self.probability = first, second, probability

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pick_second = (torch.rand(len(images)) < self.probability).to(images.device)
        out = images.clone()
        for mask, module in ((~pick_second, self.first), (pick_second, self.second)):
            if mask.any():
                out[mask] = module(images[mask])
        return out


def training_shift(
    names: Sequence[str],
    probability: float,
    *,
    blind: bool = False,
    compose_probability: float = 0.0,
    augmix_probability: float = 0.0,
) -> nn.Module:
    """The enhancer's training shift: AugMix alone (``blind``), else one draw from ``names`` (an image stays
    clean with ``1 - probability``), with ``compose_probability`` two draws in a row instead, and with
    ``augmix_probability`` AugMix instead of either."""
    if blind:
        return RandomAugMix()
    shift: nn.Module = RandomCorruption(probability, names)
    if compose_probability:
        twice = nn.Sequential(RandomCorruption(1.0, names), RandomCorruption(1.0, names))
        shift = EitherShift(shift, twice, compose_probability)
    if augmix_probability:
        shift = EitherShift(shift, RandomAugMix(), augmix_probability)
    return shift


def corrupted_copy(
    data: LabelledImages, probability: float, seed: int, names: Sequence[str] = BENCHMARK_NAMES
) -> LabelledImages:
    """A fixed corrupted version of ``data`` (uint8), e.g. a validation set that stays the same each epoch."""
    generator = torch.Generator().manual_seed(seed)
    which, severity = sample_conditions(len(data), probability, generator, names)
    out = torch.empty_like(data.images)
    for start in range(0, len(data), 1000):
        part = slice(start, start + 1000)
        index = torch.arange(len(data))[part]
        images = apply_conditions(to_float(data.images[part]), which[part], severity[part], seed, index, names)
        out[part] = (images * 255).round().to(torch.uint8)
    return LabelledImages(data.name, f"{data.split}-corrupted", out, data.labels, data.classes)
