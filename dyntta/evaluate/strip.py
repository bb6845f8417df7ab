"""The enhancer strip: a few fixed test images per corruption as clean | corrupted | enhanced, with the
recognizer-alone prediction of the corrupted image and the enhancer + recognizer prediction.

The predictions are read from the report's prediction table (so the strip shows exactly what the accuracy
tables count); only the enhanced pixels need a model call, one small batch per corruption. Which images are
shown is fixed by a rule, never by the results: the first image of each of the first ``count`` classes met
in the test set, so the strip neither flatters nor slights the enhancer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dyntta.contract import GROUP_OF
from dyntta.data import LabelledImages
from dyntta.evaluate.predictions import Corruption, corrupt_uint8, quantise
from dyntta.evaluate.report import PredictionTable
from dyntta.evaluate.schema import EnhancerStrip, StripRow, StripSample

#: uint8 NCHW batch -> the enhancer's output for it, uint8 NCHW (what the served enhancer returns)
EnhanceFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StripSpec:
    """How to make the strip: the enhancer, which two models it compares, which images and severity."""

    enhance: EnhanceFn
    enhanced_by: str  # said in the report: where the enhanced images come from
    alone: str = "recognizer"
    enhanced: str = "enhancer + recognizer"
    count: int = 3
    severity: int | None = None  # None: the middle of the evaluated severities
    indices: Sequence[int] | None = None  # None: the first image of each of the first ``count`` classes


@dataclass
class StripImages:
    """The strip's pixels, uint8 (k, 3, S, S): the clean images, and per corruption corrupted and enhanced."""

    clean: torch.Tensor
    corrupted: dict[str, torch.Tensor] = field(default_factory=dict)
    enhanced: dict[str, torch.Tensor] = field(default_factory=dict)


def module_enhancer(module: nn.Module, device: str | torch.device = "cpu") -> EnhanceFn:
    """A torch enhancer (float [0, 1] NCHW in and out) as an :data:`EnhanceFn`: its output rounded to uint8,
    as the served enhancer's ``ENHANCED_IMAGE``."""
    module = module.eval()

    @torch.inference_mode()
    def enhance(images: torch.Tensor) -> torch.Tensor:
        return quantise(module(images.to(device).float().div(255.0)).float()).cpu()

    return enhance


def first_of_each_class(labels: np.ndarray, count: int) -> list[int]:
    """Indices of the first image of each of the first ``count`` distinct classes, in test-set order."""
    seen: dict[int, int] = {}
    for i, label in enumerate(np.asarray(labels).tolist()):
        if label not in seen:
            seen[label] = i
            if len(seen) == count:
                break
    return sorted(seen.values())


def middle_severity(severities: Sequence[int]) -> int:
    """The middle evaluated severity (3 of 1-5; the lower middle of an even count)."""
    ordered = sorted(severities)
    return ordered[(len(ordered) - 1) // 2]


def make_strip(
    spec: StripSpec, data: LabelledImages, table: PredictionTable, corruption: Corruption
) -> tuple[EnhancerStrip, StripImages]:
    """The strip's record (for the report) and its pixels (for the figures). ``corruption`` must be the
    run's: the images are re-made from their indices, so they are the very images the models saw."""
    for name in (spec.alone, spec.enhanced):
        if name not in table.models:
            raise ValueError(f"the strip compares {name!r}, which is not a model of the report")
    severity = spec.severity if spec.severity is not None else middle_severity(table.severities)
    if severity not in table.severities:
        raise ValueError(f"strip severity {severity} was not evaluated (severities {list(table.severities)})")
    indices = list(spec.indices) if spec.indices is not None else first_of_each_class(table.labels, spec.count)
    if not indices or any(not 0 <= i < len(data) for i in indices):
        raise ValueError(f"strip image indices {indices} are not all in the {len(data)} evaluated images")
    index = torch.tensor(indices)
    clean = data.images[index]
    images = StripImages(clean=clean)
    rows = []
    for name in table.corruptions:
        condition = (name, severity)
        corrupted = corrupt_uint8(
            clean, condition, index, seed=corruption.seed, table=corruption.table, device=corruption.device
        )
        enhanced = torch.as_tensor(spec.enhance(corrupted))
        if enhanced.dtype != torch.uint8 or enhanced.shape != corrupted.shape:
            raise ValueError(
                f"the enhancer returned {enhanced.dtype} {tuple(enhanced.shape)} for uint8 {tuple(corrupted.shape)}"
            )
        images.corrupted[name], images.enhanced[name] = corrupted, enhanced
        samples = [
            StripSample(
                index=i,
                label=int(table.labels[i]),
                predicted={m: int(table.models[m].predicted[condition][i]) for m in (spec.alone, spec.enhanced)},
            )
            for i in indices
        ]
        rows.append(StripRow(corruption=name, group=GROUP_OF[name], samples=samples))
    strip = EnhancerStrip(
        severity=severity,
        indices=indices,
        classes=list(data.classes),
        alone=spec.alone,
        enhanced=spec.enhanced,
        enhanced_by=spec.enhanced_by,
        rows=rows,
    )
    return strip, images


__all__ = [
    "EnhanceFn",
    "StripImages",
    "StripSpec",
    "first_of_each_class",
    "make_strip",
    "middle_severity",
    "module_enhancer",
]
