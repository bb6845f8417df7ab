"""Fill a prediction table: corrupt each batch once, classify it with every model, then build the report.

Every model (the recognizer alone, enhancer + recognizer, the CE reference) sees the very same corrupted
uint8 images: each batch is corrupted once per condition and handed to all of them, which makes the
comparison and the CE fair by construction and costs one corruption pass instead of one per model.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dyntta.data import LabelledImages, to_float
from dyntta.evaluate.classifiers import ClassifyFn
from dyntta.evaluate.report import (
    CLEAN,
    Condition,
    ModelPredictions,
    PredictionTable,
    ReferenceErrors,
    build_report,
    resolve_conditions,
)
from dyntta.version import __version__

ProgressCallback = Callable[[float], None]
REFERENCE_KEY = "reference"

PROTOCOL = {
    "corruption": "in memory (on the fly) with dyntta.corruptions, not the released -C files",
    "jpeg_reencode": False,
    "quantisation": "each corrupted float image is rounded to uint8 before classification (as stored -C "
    "sets and as the server receives images)",
    "determinism": "corruption randomness derived from (seed, image index, corruption, severity): the same "
    "image gets the same corruption whatever the batch size; every model sees the same images",
}


@dataclass
class ReportRun:
    """A finished run: the report dict, the predictions it was computed from and sample images."""

    report: dict[str, Any]
    predictions: PredictionTable
    samples: dict[Condition, torch.Tensor] = field(default_factory=dict)  # uint8 (k, 3, S, S) per condition
    sample_indices: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


def corruption_implementation(
    table: str | None, image_size: int, corruptions: Sequence[str] = ()
) -> dict[str, Any]:
    """Implementation, version, parameter table (name and the values used) of the corruption suite."""
    from dyntta.corruptions import IMPLEMENTATION_VERSION, TABLE_NAMES, TABLES, default_table, describe

    if table is not None and table not in TABLE_NAMES:
        raise ValueError(f"unknown corruption parameter table {table!r}; expected one of {TABLE_NAMES}")
    resolved = table or default_table(image_size, image_size)
    return {
        "implementation": "dyntta.corruptions",
        "version": str(IMPLEMENTATION_VERSION),
        "table": resolved,
        "table_requested": table,
        "description": describe(table),
        "parameters": {
            c: [list(p) if isinstance(p, tuple) else p for p in TABLES[resolved][c]] for c in corruptions
        },
    }


def quantise(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, rounding to nearest (truncation would darken every image by half a level)."""
    return images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def _as_logits(output: torch.Tensor | np.ndarray, n: int, num_classes: int, model: str) -> torch.Tensor:
    logits = torch.as_tensor(output).float()
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(
            f"model {model!r} returned shape {tuple(logits.shape)} for {n} images; "
            "expected logits (N, classes)"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"model {model!r} has {logits.shape[1]} outputs but the data has {num_classes} classes"
        )
    return logits


def collect_predictions(
    classifiers: Mapping[str, ClassifyFn],
    data: LabelledImages,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    *,
    seed: int = 0,
    table: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress_callback: ProgressCallback | None = None,
    show_progress: bool = False,
    sample_indices: Sequence[int] = (),
) -> tuple[PredictionTable, dict[Condition, torch.Tensor]]:
    """Predictions of every classifier on the clean images and every (corruption, severity)."""
    from dyntta.corruptions import corrupt  # imported here so the report maths does not need the suite

    names, levels = resolve_conditions(corruptions, severities)
    if not classifiers:
        raise ValueError("no classifier to evaluate")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(data)
    if n == 0:
        raise ValueError("the data set is empty")
    labels = data.labels.numpy()
    num_classes = len(data.classes)
    table_out = PredictionTable(
        labels=labels,
        corruptions=names,
        severities=levels,
        models={m: ModelPredictions() for m in classifiers},
    )
    conditions = table_out.conditions()
    starts = list(range(0, n, batch_size))
    wanted = sorted({i for i in sample_indices if 0 <= i < n})
    samples: dict[Condition, torch.Tensor] = {}
    device = torch.device(device)
    total = len(conditions) * len(starts)
    bar = tqdm(total=total, desc="report", unit="batch", disable=not show_progress, dynamic_ncols=True)
    done = 0
    try:
        for condition in conditions:
            bar.set_postfix_str("clean" if condition == CLEAN else f"{condition[0]} s{condition[1]}")
            preds: dict[str, list[np.ndarray]] = {m: [] for m in classifiers}
            confs: dict[str, list[np.ndarray]] = {m: [] for m in classifiers}
            kept: list[torch.Tensor] = []
            for start in starts:
                batch = data.images[start : start + batch_size]
                if condition != CLEAN:
                    indices = torch.arange(start, start + len(batch))
                    corrupted = corrupt(
                        to_float(batch).to(device),
                        condition[0],
                        condition[1],
                        seed=seed,
                        table=table,
                        indices=indices,
                    )
                    batch = quantise(corrupted).cpu()
                for model, classify in classifiers.items():
                    probs = _as_logits(classify(batch), len(batch), num_classes, model).softmax(dim=1)
                    confidence, predicted = probs.max(dim=1)
                    preds[model].append(predicted.numpy().astype(np.int64))
                    confs[model].append(confidence.numpy().astype(np.float32))
                kept.extend(batch[i - start] for i in wanted if start <= i < start + len(batch))
                done += 1
                bar.update(1)
                if progress_callback is not None:
                    progress_callback(done / total)
            for model in classifiers:
                table_out.models[model].predicted[condition] = np.concatenate(preds[model])
                table_out.models[model].confidence[condition] = np.concatenate(confs[model])
            if kept:
                samples[condition] = torch.stack(kept)
    finally:
        bar.close()
    return table_out, samples


def run_report(
    classify_fn: ClassifyFn | Mapping[str, ClassifyFn],
    data: LabelledImages,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    seed: int = 0,
    table: str | None = None,
    progress_callback: ProgressCallback | None = None,
    *,
    reference: ClassifyFn | ReferenceErrors | None = None,
    reference_name: str = REFERENCE_KEY,
    header: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    sample_indices: Sequence[int] = (0,),
) -> ReportRun:
    """Evaluate ``classify_fn`` (uint8 NCHW batch -> logits) on ``data`` clean and corrupted; report.

    - ``classify_fn`` may be a mapping ``{name: fn}`` to compare models on the same corrupted images
      (e.g. ``{"recognizer": r, "enhancer + recognizer": e}``); a single callable is named ``"model"``.
    - ``reference``: a callable evaluated in the same pass (CE/mCE relative to it), fixed
      :class:`ReferenceErrors` (e.g. AlexNet, for true ImageNet-C only), or ``None`` (no CE).
    - ``progress_callback(fraction)`` is called after every batch, fraction in (0, 1].
    - ``header`` entries (model info, command, ...) are merged over the data/corruption/protocol header.
    """
    classifiers = dict(classify_fn) if isinstance(classify_fn, Mapping) else {"model": classify_fn}
    reference_key: str | None = None
    if reference is not None and not isinstance(reference, ReferenceErrors):
        if reference_name in classifiers:
            raise ValueError(f"reference name {reference_name!r} clashes with a compared model's name")
        classifiers[reference_name] = reference
        reference_key = reference_name
    names, levels = resolve_conditions(corruptions, severities)
    corruption_info = corruption_implementation(table, data.image_size, names)  # also validates ``table``
    started = time.perf_counter()
    predictions, samples = collect_predictions(
        classifiers,
        data,
        names,
        levels,
        seed=seed,
        table=table,
        batch_size=batch_size,
        device=device,
        progress_callback=progress_callback,
        show_progress=show_progress,
        sample_indices=sample_indices,
    )
    seconds = time.perf_counter() - started
    full_header: dict[str, Any] = {
        "dyntta_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "name": data.name,
            "split": data.split,
            "n": len(data),
            "image_size": data.image_size,
            "classes": list(data.classes),
            "preprocessing": "RGB uint8 at the model's input size (dyntta.data.to_model_input, bilinear)",
        },
        "seed": seed,
        "corruptions": corruption_info,
        "protocol": dict(PROTOCOL),
        "run": {
            "seconds": round(seconds, 1),
            "device": str(device),
            "batch_size": batch_size,
            "images_classified": len(data) * len(predictions.conditions()) * len(classifiers),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(terse=True),
        },
    }
    full_header.update(header or {})
    report = build_report(predictions, full_header, reference=reference_key if reference_key else reference)  # type: ignore[arg-type]
    return ReportRun(
        report=report,
        predictions=predictions,
        samples=samples,
        sample_indices=sorted({i for i in sample_indices if 0 <= i < len(data)}),
        classes=list(data.classes),
    )


__all__ = [
    "PROTOCOL",
    "ProgressCallback",
    "ReportRun",
    "collect_predictions",
    "corruption_implementation",
    "quantise",
    "run_report",
]
