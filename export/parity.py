"""Parity reports: what comparing an exported ONNX graph with PyTorch found, as typed values.

:mod:`export.onnx` measures (``recognizer_parity``, ``enhancer_parity``, ``pipeline_parity``) and
:mod:`export.build` adds each model's batch independence. ``to_json()`` is the report's entry in the model's
``export.json`` (``parity``, ``pipeline_parity``), keys in the order those files have always had:
``model``, ``images``, ``data``, the metrics, ``tolerance``, ``passed``, then the enhancer's blend weights
(``max_abs_op_weight_diff``, ``op_weights``), then ``batch_independence_max_diff`` and
``op_weights_batch_independence_max_diff`` once measured.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Self

import torch


class ParityError(AssertionError):
    """The exported graph disagrees with PyTorch beyond tolerance."""


@dataclass
class Tolerance:
    """Pass criteria: ``max|onnx - torch| <= atol + rtol * max|torch|`` and top-1 agreement."""

    atol: float = 1e-3
    rtol: float = 1e-4
    min_top1_agreement: float = 0.99  # near-ties may flip between float implementations
    max_pixel_diff: int = 1  # enhancer: one uint8 level (rounding of values at .5 boundaries)

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> Tolerance:
        if dtype == torch.float16:
            return cls(atol=5e-2, rtol=2e-2, min_top1_agreement=0.98, max_pixel_diff=2)
        return cls()


@dataclass(frozen=True, kw_only=True)
class ModelParity(ABC):
    """One model's ONNX graph against PyTorch: what was compared, the metrics, the verdict."""

    model: ClassVar[str]
    images: int
    data: str
    tolerance: Tolerance
    batch_independence_max_diff: float | None = None  # measured by export.build after the comparison

    @property
    @abstractmethod
    def passed(self) -> bool:
        """The verdict, from the metrics and the tolerance."""

    @abstractmethod
    def metrics(self) -> dict[str, Any]:
        """The measured differences, in ``export.json``'s order."""

    def _batch_gaps(self) -> list[tuple[str, float | None, float]]:
        """``(name in export.json, measured gap, allowed gap)`` for each served output."""
        return [("batch_independence_max_diff", self.batch_independence_max_diff, self.tolerance.atol)]

    def with_batch_independence(self, gap: float, op_weights_gap: float | None = None) -> Self:
        if op_weights_gap is not None:
            raise ValueError(f"the {self.model} serves no blend weights")
        return replace(self, batch_independence_max_diff=gap)

    def extra(self) -> dict[str, Any]:
        """What follows the verdict in ``export.json`` (before the batch gaps); nothing by default."""
        return {}

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"model": self.model, "images": self.images, "data": self.data}
        report.update(self.metrics())
        report.update(tolerance=asdict(self.tolerance), passed=self.passed)
        report.update(self.extra())
        report.update({key: gap for key, gap, _ in self._batch_gaps() if gap is not None})
        return report

    def check(self, onnx_path: str | os.PathLike[str]) -> None:
        """A ``ParityError`` naming ``onnx_path`` if the graph disagrees with PyTorch."""
        if not self.passed:
            raise ParityError(f"ONNX {self.model} {onnx_path} disagrees with PyTorch: {self.to_json()}")

    def check_batch_independence(self) -> None:
        """Triton's dynamic batcher merges clients' requests: an output must not depend on its batch."""
        for key, gap, allowed in self._batch_gaps():
            if gap is not None and gap > allowed:
                raise ParityError(
                    f"{self.model} output depends on batch composition ({key} {gap}); "
                    "Triton's dynamic batching would change results"
                )


@dataclass(frozen=True, kw_only=True)
class RecognizerParity(ModelParity):
    """Logits: within ``atol + rtol * max_abs_logit`` and the same top-1 class often enough."""

    model: ClassVar[str] = "recognizer"
    max_abs_logit_diff: float
    max_abs_logit: float
    top1_agreement: float

    @property
    def passed(self) -> bool:
        allowed = self.tolerance.atol + self.tolerance.rtol * self.max_abs_logit
        return self.max_abs_logit_diff <= allowed and self.top1_agreement >= self.tolerance.min_top1_agreement

    def metrics(self) -> dict[str, Any]:
        return {
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "max_abs_logit": self.max_abs_logit,
            "top1_agreement": self.top1_agreement,
        }


@dataclass(frozen=True, kw_only=True)
class EnhancerParity(ModelParity):
    """uint8 images, in levels; with ``op_weights`` (K served blend weights), those within ``atol``."""

    model: ClassVar[str] = "enhancer"
    max_abs_pixel_diff: int
    fraction_pixels_differing: float
    max_abs_op_weight_diff: float | None = None
    op_weights: int | None = None
    op_weights_batch_independence_max_diff: float | None = None

    @property
    def passed(self) -> bool:
        pixels = self.max_abs_pixel_diff <= self.tolerance.max_pixel_diff
        weights = self.max_abs_op_weight_diff is None or self.max_abs_op_weight_diff <= self.tolerance.atol
        return pixels and weights

    def metrics(self) -> dict[str, Any]:
        return {
            "max_abs_pixel_diff": self.max_abs_pixel_diff,
            "fraction_pixels_differing": self.fraction_pixels_differing,
        }

    def _batch_gaps(self) -> list[tuple[str, float | None, float]]:
        return [
            ("batch_independence_max_diff", self.batch_independence_max_diff, self.tolerance.max_pixel_diff),
            (
                "op_weights_batch_independence_max_diff",
                self.op_weights_batch_independence_max_diff,
                self.tolerance.atol,
            ),
        ]

    def with_batch_independence(self, gap: float, op_weights_gap: float | None = None) -> Self:
        return replace(self, batch_independence_max_diff=gap, op_weights_batch_independence_max_diff=op_weights_gap)

    def extra(self) -> dict[str, Any]:
        if self.op_weights is None:
            return {}
        return {"max_abs_op_weight_diff": self.max_abs_op_weight_diff, "op_weights": self.op_weights}


@dataclass(frozen=True)
class IdentityParity:
    """The pass-through enhancer: nothing to compare, it passes by construction."""

    note: str
    model: ClassVar[str] = "enhancer"
    passed: ClassVar[bool] = True

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "identity": True, "passed": self.passed, "note": self.note}

    def check_batch_independence(self) -> None:
        """One Identity node: each image's output is its input."""


@dataclass(frozen=True)
class PipelineParity:
    """Enhancer then recognizer, the ONNX chain against the PyTorch chain: reported, not enforced."""

    images: int
    max_abs_logit_diff: float
    top1_agreement: float
    model: ClassVar[str] = "dyntta (enhancer -> recognizer)"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class AsGivenParity:
    """A user's ONNX recognizer served as given (:mod:`export.external`): the served graph against the
    user's file, both under onnxruntime; the same network, so logits within ``atol`` and every top-1 class
    the same. ``atol`` is the criterion, not part of the report."""

    source: str
    source_sha256: str
    source_nodes: int
    images: int
    max_abs_logit_diff: float
    top1_agreement: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.atol and self.top1_agreement == 1.0

    def to_json(self) -> dict[str, Any]:
        report = asdict(self)
        del report["atol"]
        return {**report, "passed": self.passed}
