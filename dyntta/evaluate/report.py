"""Robustness-report numbers as a pure function of a prediction table, into the typed :class:`Report`.

Nothing here runs a model or corrupts an image: :func:`build_report` turns predicted labels (and, if
known, confidences) per condition into accuracies, intervals, means, CE/mCE and calibration. The CLI, and
the gateway's report jobs with predictions obtained from Triton, share this one function and therefore
one report format (``FORMAT``).

Definitions follow Hendrycks & Dietterich (ICLR 2019, arXiv:1903.12261); the corruption taxonomy (groups,
benchmark vs extra corruptions, severities) is :mod:`dyntta.contract`'s:

- ``E[c][s]`` is the top-1 error on corruption ``c`` at severity ``s``;
- ``CE_c = sum_s E^f[c][s] / sum_s E^ref[c][s]``; ``mCE`` is the mean of ``CE_c`` over the 15 ImageNet-C
  corruptions;
- relative ``CE_c = (sum_s E^f[c][s] - S * E^f_clean) / (sum_s E^ref[c][s] - S * E^ref_clean)``, where S is
  the number of severities evaluated (5 in the paper).

All numbers in the report are fractions (accuracy 0.913, CE 0.767); the Markdown writer shows percent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyntta import contract
from dyntta.contract import BENCHMARK_CORRUPTIONS, BENCHMARK_GROUPS, EXTRA_CORRUPTIONS, SEVERITIES, resolve_conditions
from dyntta.evaluate.schema import (
    FORMAT,
    BlockSummary,
    Calibration,
    CleanResult,
    Conditions,
    CorruptionErrors,
    ModelResults,
    ReferenceBlock,
    Report,
    ReportHeader,
    WorstCorruption,
)

#: AlexNet top-1 errors on the released ImageNet-C files (timm ``imagenetc_alexnet_error_rates_list``; row
#: means equal augmix ``ALEXNET_ERR``). Valid as a CE reference only for true ImageNet-C data.
ALEXNET_IMAGENET_C_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_IMAGENET_C_CLEAN_ERROR = 0.4348

#: A condition: (corruption name, severity); the clean images are ``CLEAN``.
Condition = tuple[str, int]
CLEAN: Condition = (contract.CLEAN, 0)
WILSON_Z95 = 1.959963984540054  # two-sided 95 % normal quantile
ECE_BINS = 15


# --- Prediction table -----------------------------------------------------------------------------------


@dataclass
class ModelPredictions:
    """One model's predicted classes (and max-softmax confidences, if known) per condition."""

    predicted: dict[Condition, np.ndarray] = field(default_factory=dict)
    confidence: dict[Condition, np.ndarray] = field(default_factory=dict)


@dataclass
class PredictionTable:
    """Predictions of one or more models on the same images, clean and under each condition.

    ``models`` keeps insertion order: the first model is the primary one (shown first in reports).
    """

    labels: np.ndarray
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    models: dict[str, ModelPredictions] = field(default_factory=dict)

    def conditions(self) -> list[Condition]:
        return [CLEAN] + [(c, s) for c in self.corruptions for s in self.severities]

    def check(self) -> None:
        """Raise ``ValueError`` unless every model has a prediction of the right length per condition."""
        n = len(self.labels)
        for model, preds in self.models.items():
            for condition in self.conditions():
                if condition not in preds.predicted:
                    raise ValueError(f"model {model!r} has no predictions for {condition}")
                if len(preds.predicted[condition]) != n:
                    raise ValueError(
                        f"model {model!r}: {len(preds.predicted[condition])} predictions for {condition}, expected {n}"
                    )


@dataclass(frozen=True)
class ReferenceErrors:
    """The CE reference: clean error and errors per (corruption, severity), with where they come from."""

    name: str
    source: str
    clean_error: float
    errors: Mapping[str, Mapping[int, float]]

    def to_block(self) -> ReferenceBlock:
        return ReferenceBlock(
            name=self.name,
            source=self.source,
            clean_error=self.clean_error,
            errors={c: dict(by_s) for c, by_s in self.errors.items()},
        )


def alexnet_imagenet_c_reference() -> ReferenceErrors:
    """AlexNet's published ImageNet-C errors. Only meaningful when the evaluated data *is* ImageNet-C."""
    return ReferenceErrors(
        name="AlexNet (published ImageNet-C errors)",
        source="Hendrycks & Dietterich 2019 (arXiv:1903.12261); timm imagenetc_alexnet_error_rates_list",
        clean_error=ALEXNET_IMAGENET_C_CLEAN_ERROR,
        errors={c: dict(zip(SEVERITIES, errs, strict=True)) for c, errs in ALEXNET_IMAGENET_C_ERRORS.items()},
    )


# --- Statistics -----------------------------------------------------------------------------------------


def wilson_interval(correct: int, n: int, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; unlike the normal approximation it stays inside
    [0, 1] and behaves near 0 % and 100 % accuracy."""
    if n <= 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins: sum over bins of |accuracy - mean confidence| x bin share."""
    if len(correct) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values; ``None`` if there is none (e.g. every relative CE undefined)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _avg(values: Iterable[float]) -> float:
    """Mean of a non-empty collection of accuracies."""
    return float(np.mean(list(values)))


# --- One model's results --------------------------------------------------------------------------------


def _block(
    accuracy: Mapping[str, Mapping[int, float]],
    names: Sequence[str],
    groups: Mapping[str, Sequence[str]] | None,
    severities: Sequence[int],
    clean_accuracy: float,
) -> BlockSummary | None:
    """Means of the evaluated corruptions among ``names`` (one block: the ImageNet-C set or the extras)."""
    names = [c for c in names if c in accuracy]
    if not names:
        return None
    per_corruption = {c: _avg(accuracy[c].values()) for c in names}
    mean = _avg(accuracy[c][s] for c in names for s in severities)
    per_group: dict[str, float | None] | None = None
    if groups is not None:
        per_group = {
            g: _avg(accuracy[c][s] for c in members if c in accuracy for s in severities)
            for g, members in groups.items()
            if any(c in accuracy for c in members)
        }
    worst = min(names, key=lambda c: per_corruption[c])
    return BlockSummary(
        per_corruption=per_corruption,
        per_severity={s: _avg(accuracy[c][s] for c in names) for s in severities},
        mean=mean,
        per_group=per_group,
        severity5_mean=_avg(accuracy[c][5] for c in names) if 5 in severities else None,
        gap=clean_accuracy - mean,  # clean minus corrupted accuracy
        worst_corruption=WorstCorruption(name=worst, accuracy=per_corruption[worst]),
    )


def _calibration(
    correct: Mapping[Condition, np.ndarray],
    confidence: Mapping[Condition, np.ndarray],
    corruptions: Sequence[str],
    severities: Sequence[int],
) -> Calibration:
    core = [c for c in corruptions if c in BENCHMARK_CORRUPTIONS]
    ece: dict[str, float | None] = {"clean": expected_calibration_error(correct[CLEAN], np.asarray(confidence[CLEAN]))}
    for s in severities if core else ():
        # Pool the 15 corruptions' images at one severity, as "ECE per severity" is usually reported.
        ece[str(s)] = expected_calibration_error(
            np.concatenate([correct[(c, s)] for c in core]),
            np.concatenate([np.asarray(confidence[(c, s)]) for c in core]),
        )
    return Calibration(ece=ece, bins=ECE_BINS, over="the evaluated ImageNet-C corruptions")


def summarise_model(
    labels: np.ndarray, preds: ModelPredictions, corruptions: Sequence[str], severities: Sequence[int]
) -> ModelResults:
    """Accuracies, interval, means and calibration of one model (no CE: that needs a reference)."""
    labels = np.asarray(labels)
    n = len(labels)
    correct = {cond: np.asarray(p) == labels for cond, p in preds.predicted.items()}
    k_clean = int(correct[CLEAN].sum())
    clean_acc = k_clean / n if n else float("nan")
    accuracy = {c: {s: float(correct[(c, s)].mean()) for s in severities} for c in corruptions}
    calibration = None
    if preds.confidence and all(cond in preds.confidence for cond in correct):
        calibration = _calibration(correct, preds.confidence, corruptions, severities)
    return ModelResults(
        clean=CleanResult(accuracy=clean_acc, correct=k_clean, n=n, ci95=wilson_interval(k_clean, n)),
        accuracy=accuracy,
        core=_block(accuracy, BENCHMARK_CORRUPTIONS, BENCHMARK_GROUPS, severities, clean_acc),
        extras=_block(accuracy, EXTRA_CORRUPTIONS, None, severities, clean_acc),
        calibration=calibration,
    )


def reference_from_results(name: str, source: str, results: ModelResults) -> ReferenceErrors:
    """A CE reference from a model evaluated in the same run (on the very same corrupted images)."""
    errors = {c: {s: 1.0 - a for s, a in by_s.items()} for c, by_s in results.accuracy.items()}
    return ReferenceErrors(name=name, source=source, clean_error=1.0 - results.clean.accuracy, errors=errors)


def corruption_errors(
    results: ModelResults,
    reference: ReferenceErrors,
    corruptions: Sequence[str],
    severities: Sequence[int],
) -> CorruptionErrors | None:
    """CE, mCE, relative CE and relative mCE of one model against ``reference`` (ImageNet-C names only)."""
    core = [c for c in corruptions if c in BENCHMARK_CORRUPTIONS]
    if not core:
        return None
    missing = [(c, s) for c in core for s in severities if s not in reference.errors.get(c, {})]
    if missing:
        raise ValueError(f"reference {reference.name!r} has no error for {missing[:3]}...")
    clean_error = 1.0 - results.clean.accuracy
    n_sev = len(severities)
    ce: dict[str, float | None] = {}
    relative: dict[str, float | None] = {}
    for c in core:
        model_sum = sum(1.0 - results.accuracy[c][s] for s in severities)
        ref_sum = sum(reference.errors[c][s] for s in severities)
        ce[c] = model_sum / ref_sum if ref_sum > 0 else None
        ref_excess = ref_sum - n_sev * reference.clean_error
        # A reference that does not degrade (excess <= 0) makes the ratio meaningless rather than large.
        relative[c] = (model_sum - n_sev * clean_error) / ref_excess if ref_excess > 0 else None
    return CorruptionErrors(
        reference=reference.name,
        per_corruption=ce,
        mce=_mean(ce.values()),
        relative_per_corruption=relative,
        relative_mce=_mean(relative.values()),
        undefined=sorted(c for c in core if ce[c] is None or relative[c] is None),
        complete=len(core) == len(BENCHMARK_CORRUPTIONS) and tuple(severities) == SEVERITIES,
    )


# --- The whole report -----------------------------------------------------------------------------------


def build_report(
    table: PredictionTable,
    header: ReportHeader | Mapping[str, Any] | None = None,
    *,
    reference: str | ReferenceErrors | None = None,
    reference_source: str = "a reference model evaluated in the same run on the same corrupted images",
) -> Report:
    """The report, a pure function of ``table`` (and ``header``, copied verbatim).

    ``reference`` names a model of ``table`` (it is reported apart, not as a compared model) or gives
    fixed :class:`ReferenceErrors`; without one there are no CE numbers.
    """
    table.check()
    corruptions, severities = table.corruptions, table.severities
    results = {
        name: summarise_model(table.labels, preds, corruptions, severities) for name, preds in table.models.items()
    }
    ref_block: ReferenceBlock | None = None
    ref_errors: ReferenceErrors | None = None
    if isinstance(reference, str):
        if reference not in results:
            raise ValueError(f"reference {reference!r} is not a model of the prediction table")
        ref_results = results.pop(reference)
        ref_errors = reference_from_results(reference, reference_source, ref_results)
        ref_block = ReferenceBlock(name=reference, source=reference_source, results=ref_results)
    elif isinstance(reference, ReferenceErrors):
        ref_errors = reference
        ref_block = reference.to_block()
    if not results:
        raise ValueError("the prediction table has no model to report besides the reference")
    if ref_errors is not None:
        for res in results.values():
            res.ce = corruption_errors(res, ref_errors, corruptions, severities)
    if not isinstance(header, ReportHeader):
        header = ReportHeader.model_validate(dict(header or {}))
    return Report(
        header=header,
        conditions=Conditions(
            corruptions=list(corruptions),
            severities=list(severities),
            core=[c for c in corruptions if c in BENCHMARK_CORRUPTIONS],
            extras=[c for c in corruptions if c in EXTRA_CORRUPTIONS],
            groups={g: list(m) for g, m in BENCHMARK_GROUPS.items()},
        ),
        models=results,
        reference=ref_block,
    )


__all__ = [
    "ALEXNET_IMAGENET_C_CLEAN_ERROR",
    "ALEXNET_IMAGENET_C_ERRORS",
    "CLEAN",
    "FORMAT",
    "Condition",
    "ModelPredictions",
    "ModelResults",
    "PredictionTable",
    "ReferenceErrors",
    "Report",
    "ReportHeader",
    "alexnet_imagenet_c_reference",
    "build_report",
    "corruption_errors",
    "expected_calibration_error",
    "reference_from_results",
    "resolve_conditions",
    "summarise_model",
    "wilson_interval",
]
