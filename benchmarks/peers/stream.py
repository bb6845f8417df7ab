"""The corrupted test stream (clean + Fashion-MNIST-C conditions) and how each setting batches it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dyntta.contract import CLEAN, CORRUPTIONS, GROUP_OF
from dyntta.corruptions import corrupt
from dyntta.data import load_dataset, to_float

FAMILIES: tuple[str, ...] = ("clean", "noise", "blur", "weather", "digital", "extra")


@dataclass(frozen=True)
class Condition:
    corruption: str  # CLEAN or a corruption name
    severity: int  # 0 for clean

    @property
    def family(self) -> str:
        return "clean" if self.corruption == CLEAN else GROUP_OF[self.corruption]

    @property
    def name(self) -> str:
        return CLEAN if self.corruption == CLEAN else f"{self.corruption}/{self.severity}"


@dataclass
class Stream:
    """Every (test image, condition) pair: uint8 images, labels, condition index per image."""

    images: torch.Tensor  # uint8 (M, 3, S, S)
    labels: torch.Tensor  # int64 (M,)
    condition: torch.Tensor  # int64 (M,), index into ``conditions``
    conditions: list[Condition]
    order: torch.Tensor  # a seeded permutation of 0..M-1: the arrival order in the serving settings

    def family_mask(self, family: str) -> torch.Tensor:
        ids = [i for i, c in enumerate(self.conditions) if c.family == family]
        return torch.isin(self.condition, torch.tensor(ids))

    def batches(
        self, setting: str, family: str | None = None, single_limit: int | None = None
    ) -> list[list[torch.Tensor]]:
        """Index batches grouped into episodes (an online method is reset before each episode).

        ``single``: the shuffled stream one image at a time; ``mixed64``: the same stream in batches of 64;
        ``homogeneous200``: batches of 200 from one condition, one episode per corruption type (its severities
        in increasing order; TENT's protocol resets per corruption type). ``family``
        restricts to that family's images (same order), for methods whose results do not depend on others;
        ``single_limit`` keeps only the first images of the stream in the single-image setting (CPU time).
        """
        keep = None if family is None else self.family_mask(family)
        if setting in ("single", "mixed64"):
            order = self.order[:single_limit] if setting == "single" else self.order
            order = order if keep is None else order[keep[order]]
            return [list(order.split(1 if setting == "single" else 64))]
        if setting == "homogeneous200":
            episodes: dict[str, list[torch.Tensor]] = {}  # corruption -> its batches, severity 1 first
            for c, condition in enumerate(self.conditions):
                index = torch.nonzero(self.condition == c).flatten()
                if len(index) and (keep is None or bool(keep[index[0]])):
                    episodes.setdefault(condition.corruption, []).extend(index.split(200))
            return list(episodes.values())
        raise ValueError(f"unknown setting {setting!r}")


def build_stream(images: int, severities: list[int], seed: int, cache: Path) -> Stream:
    """The first ``images`` Fashion-MNIST test images, clean and under all 19 corruptions at ``severities``
    (dyntta.corruptions, ``seed``), cached as uint8 in ``cache`` (corrupting takes a while on CPU)."""
    conditions = [Condition(CLEAN, 0)] + [Condition(n, s) for n in CORRUPTIONS for s in severities]
    if cache.exists():
        saved = torch.load(cache)
    else:
        test = load_dataset("fashion-mnist", "test").subset(torch.arange(images))
        x = to_float(test.images)
        parts = [test.images] + [
            (corrupt(x, c.corruption, c.severity, seed=seed) * 255).round().to(torch.uint8) for c in conditions[1:]
        ]
        saved = {"images": torch.cat(parts), "labels": test.labels.repeat(len(conditions))}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, cache)
    condition = torch.arange(len(conditions)).repeat_interleave(images)
    order = torch.randperm(len(condition), generator=torch.Generator().manual_seed(seed))
    return Stream(saved["images"], saved["labels"], condition, conditions, order)
