"""Robustness-report numbers as a pure function of a prediction table.

Nothing here runs a model or corrupts an image: :func:`build_report` turns predicted labels (and, if
known, confidences) per condition into accuracies, intervals, means, CE/mCE and calibration. The CLI, and
the gateway's report jobs with predictions obtained from Triton, share this one function and therefore
one report format (``FORMAT``).

Definitions follow Hendrycks & Dietterich (ICLR 2019, arXiv:1903.12261), see
``notes/corruptions-and-metrics.md`` section 4:

- ``E[c][s]`` is the top-1 error on corruption ``c`` at severity ``s``;
- ``CE_c = sum_s E^f[c][s] / sum_s E^ref[c][s]``; ``mCE`` is the mean of ``CE_c`` over the 15 ImageNet-C
  corruptions;
- relative ``CE_c = (sum_s E^f[c][s] - S * E^f_clean) / (sum_s E^ref[c][s] - S * E^ref_clean)``, where S is
  the number of severities evaluated (5 in the paper).

All numbers in the report are fractions (accuracy 0.913, CE 0.767); the Markdown writer shows percent.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "dyntta.robustness-report/1"

#: The benchmark's definition: the 15 ImageNet-C corruptions in their groups, in the standard order
#: (``hendrycks/robustness ImageNet-C/test.py``). mCE and the "overall" means are over these only.
CORE_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORE_NAMES: tuple[str, ...] = tuple(name for names in CORE_GROUPS.values() for name in names)
#: The 4 validation-only corruptions: reported apart, never part of mCE or the overall mean.
EXTRA_NAMES: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_NAMES: tuple[str, ...] = CORE_NAMES + EXTRA_NAMES
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
GROUP_OF: dict[str, str] = {name: group for group, names in CORE_GROUPS.items() for name in names} | {
    name: "extra" for name in EXTRA_NAMES
}

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
CLEAN: Condition = ("clean", 0)
WILSON_Z95 = 1.959963984540054  # two-sided 95 % normal quantile
ECE_BINS = 15


# --- Conditions -----------------------------------------------------------------------------------------


def resolve_conditions(
    corruptions: Iterable[str] | None = None, severities: Iterable[int] | None = None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validate and order corruption names and severities; group names ("noise", "extra", "core", "all")
    expand to their members. ``None`` means all 19 corruptions / all 5 severities.

    Raises ``ValueError`` with the valid choices (and the closest name) for anything unknown.
    """
    if corruptions is None:
        names = set(ALL_NAMES)
    else:
        names = set()
        requested = list(corruptions)
        if not requested:
            raise ValueError("no corruptions requested")
        for raw in requested:
            key = raw.strip().lower().replace("-", "_")
            if key in ALL_NAMES:
                names.add(key)
            elif key in CORE_GROUPS:
                names.update(CORE_GROUPS[key])
            elif key in ("extra", "extras"):
                names.update(EXTRA_NAMES)
            elif key in ("core", "imagenet_c", "all"):
                names.update(CORE_NAMES if key != "all" else ALL_NAMES)
            else:
                close = difflib.get_close_matches(key, [*ALL_NAMES, *CORE_GROUPS], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"unknown corruption {raw!r}{hint}; expected one of {', '.join(ALL_NAMES)} "
                    f"or a group ({', '.join(CORE_GROUPS)}, extra, core, all)"
                )
    if severities is None:
        levels = set(SEVERITIES)
    else:
        levels = set()
        requested_levels = list(severities)
        if not requested_levels:
            raise ValueError("no severities requested")
        for raw in requested_levels:
            try:
                level = int(raw)
            except (TypeError, ValueError):
                level = None
            if level is None or level not in SEVERITIES or float(raw) != level:
                raise ValueError(f"invalid severity {raw!r}; severities are integers 1 to 5")
            levels.add(level)
    return tuple(n for n in ALL_NAMES if n in names), tuple(sorted(levels))


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "clean_error": self.clean_error,
            "errors": {c: {str(s): e for s, e in by_s.items()} for c, by_s in self.errors.items()},
        }


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


def _mean(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# --- One model's results --------------------------------------------------------------------------------


def summarise_model(
    labels: np.ndarray, preds: ModelPredictions, corruptions: Sequence[str], severities: Sequence[int]
) -> dict[str, Any]:
    """Accuracies, interval, means and calibration of one model (no CE: that needs a reference)."""
    labels = np.asarray(labels)
    n = len(labels)
    correct = {cond: np.asarray(p) == labels for cond, p in preds.predicted.items()}
    k_clean = int(correct[CLEAN].sum())
    clean_acc = k_clean / n if n else float("nan")
    accuracy = {c: {s: float(correct[(c, s)].mean()) for s in severities} for c in corruptions}

    def block(names: Sequence[str], groups: Mapping[str, Sequence[str]] | None) -> dict[str, Any] | None:
        names = [c for c in names if c in accuracy]
        if not names:
            return None
        per_corruption = {c: _mean(accuracy[c].values()) for c in names}
        out: dict[str, Any] = {
            "per_corruption": per_corruption,
            "per_severity": {str(s): _mean(accuracy[c][s] for c in names) for s in severities},
            "mean": _mean(accuracy[c][s] for c in names for s in severities),
        }
        if groups is not None:
            out["per_group"] = {
                g: _mean(accuracy[c][s] for c in members if c in accuracy for s in severities)
                for g, members in groups.items()
                if any(c in accuracy for c in members)
            }
        out["severity5_mean"] = _mean(accuracy[c][5] for c in names) if 5 in severities else None
        out["gap"] = clean_acc - out["mean"]  # clean minus corrupted accuracy
        worst = min(names, key=lambda c: per_corruption[c])
        out["worst_corruption"] = {"name": worst, "accuracy": per_corruption[worst]}
        return out

    result: dict[str, Any] = {
        "clean": {
            "accuracy": clean_acc,
            "correct": k_clean,
            "n": n,
            "ci95": list(wilson_interval(k_clean, n)),
            "interval": "Wilson score, 95 %",
        },
        "accuracy": {c: {str(s): a for s, a in by_s.items()} for c, by_s in accuracy.items()},
        "core": block(CORE_NAMES, CORE_GROUPS),
        "extras": block(EXTRA_NAMES, None),
    }
    if preds.confidence and all(cond in preds.confidence for cond in correct):
        core = [c for c in corruptions if c in CORE_NAMES]
        ece = {"clean": expected_calibration_error(correct[CLEAN], np.asarray(preds.confidence[CLEAN]))}
        for s in severities if core else ():
            # Pool the 15 corruptions' images at one severity, as "ECE per severity" is usually reported.
            ece[str(s)] = expected_calibration_error(
                np.concatenate([correct[(c, s)] for c in core]),
                np.concatenate([np.asarray(preds.confidence[(c, s)]) for c in core]),
            )
        result["calibration"] = {"ece": ece, "bins": ECE_BINS, "over": "the evaluated ImageNet-C corruptions"}
    return result


def reference_from_results(name: str, source: str, results: Mapping[str, Any]) -> ReferenceErrors:
    """A CE reference from a model evaluated in the same run (on the very same corrupted images)."""
    errors = {c: {int(s): 1.0 - a for s, a in by_s.items()} for c, by_s in results["accuracy"].items()}
    return ReferenceErrors(name=name, source=source, clean_error=1.0 - results["clean"]["accuracy"], errors=errors)


def corruption_errors(
    results: Mapping[str, Any],
    reference: ReferenceErrors,
    corruptions: Sequence[str],
    severities: Sequence[int],
) -> dict[str, Any] | None:
    """CE, mCE, relative CE and relative mCE of one model against ``reference`` (ImageNet-C names only)."""
    core = [c for c in corruptions if c in CORE_NAMES]
    if not core:
        return None
    missing = [(c, s) for c in core for s in severities if s not in reference.errors.get(c, {})]
    if missing:
        raise ValueError(f"reference {reference.name!r} has no error for {missing[:3]}...")
    clean_error = 1.0 - results["clean"]["accuracy"]
    n_sev = len(severities)
    ce: dict[str, float | None] = {}
    relative: dict[str, float | None] = {}
    for c in core:
        model_sum = sum(1.0 - results["accuracy"][c][str(s)] for s in severities)
        ref_sum = sum(reference.errors[c][s] for s in severities)
        ce[c] = model_sum / ref_sum if ref_sum > 0 else None
        ref_excess = ref_sum - n_sev * reference.clean_error
        # A reference that does not degrade (excess <= 0) makes the ratio meaningless rather than large.
        relative[c] = (model_sum - n_sev * clean_error) / ref_excess if ref_excess > 0 else None
    complete = len(core) == len(CORE_NAMES) and tuple(severities) == SEVERITIES
    return {
        "reference": reference.name,
        "per_corruption": ce,
        "mce": _mean(ce.values()),
        "relative_per_corruption": relative,
        "relative_mce": _mean(relative.values()),
        "undefined": sorted(c for c in core if ce[c] is None or relative[c] is None),
        "complete": complete,  # all 15 x 5 conditions: comparable with published mCE
    }


# --- The whole report -----------------------------------------------------------------------------------


def build_report(
    table: PredictionTable,
    header: Mapping[str, Any] | None = None,
    *,
    reference: str | ReferenceErrors | None = None,
    reference_source: str = "a reference model evaluated in the same run on the same corrupted images",
) -> dict[str, Any]:
    """The report as a JSON-ready dict, a pure function of ``table`` (and ``header``, copied verbatim).

    ``reference`` names a model of ``table`` (it is reported apart, not as a compared model) or gives
    fixed :class:`ReferenceErrors`; without one there are no CE numbers.
    """
    table.check()
    corruptions, severities = table.corruptions, table.severities
    results = {
        name: summarise_model(table.labels, preds, corruptions, severities) for name, preds in table.models.items()
    }
    ref_block: dict[str, Any] | None = None
    ref_errors: ReferenceErrors | None = None
    if isinstance(reference, str):
        if reference not in results:
            raise ValueError(f"reference {reference!r} is not a model of the prediction table")
        ref_results = results.pop(reference)
        ref_errors = reference_from_results(reference, reference_source, ref_results)
        ref_block = {"name": reference, "source": reference_source, "results": ref_results}
    elif isinstance(reference, ReferenceErrors):
        ref_errors = reference
        ref_block = reference.to_dict()
    if not results:
        raise ValueError("the prediction table has no model to report besides the reference")
    if ref_errors is not None:
        for res in results.values():
            res["ce"] = corruption_errors(res, ref_errors, corruptions, severities)
    return {
        "format": FORMAT,
        "header": dict(header or {}),
        "conditions": {
            "corruptions": list(corruptions),
            "severities": list(severities),
            "core": [c for c in corruptions if c in CORE_NAMES],
            "extras": [c for c in corruptions if c in EXTRA_NAMES],
            "groups": {g: list(m) for g, m in CORE_GROUPS.items()},
        },
        "units": "fractions: accuracy, error and CE (model error / reference error) in [0, 1]-scale; "
        "multiply by 100 for percent (reference = 100)",
        "models": results,
        "reference": ref_block,
    }


__all__ = [
    "ALEXNET_IMAGENET_C_CLEAN_ERROR",
    "ALEXNET_IMAGENET_C_ERRORS",
    "ALL_NAMES",
    "CLEAN",
    "CORE_GROUPS",
    "CORE_NAMES",
    "EXTRA_NAMES",
    "FORMAT",
    "GROUP_OF",
    "SEVERITIES",
    "Condition",
    "ModelPredictions",
    "PredictionTable",
    "ReferenceErrors",
    "alexnet_imagenet_c_reference",
    "build_report",
    "corruption_errors",
    "expected_calibration_error",
    "reference_from_results",
    "resolve_conditions",
    "summarise_model",
    "wilson_interval",
]
