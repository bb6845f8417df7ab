"""Fill a prediction table: corrupt each batch once, classify it with every model, then build the report.

Every model (the recognizer alone, enhancer + recognizer, the CE reference) sees the very same corrupted
uint8 images: each batch is corrupted once per condition and handed to all of them, which makes the
comparison and the CE fair by construction and costs one corruption pass instead of one per model.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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


def corruption_implementation(table: str | None, image_size: int, corruptions: Sequence[str] = ()) -> dict[str, Any]:
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
        "parameters": {c: [list(p) if isinstance(p, tuple) else p for p in TABLES[resolved][c]] for c in corruptions},
    }


def quantise(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, rounding to nearest (truncation would darken every image by half a level)."""
    return images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def _as_logits(output: torch.Tensor | np.ndarray, n: int, num_classes: int, model: str) -> torch.Tensor:
    logits = torch.as_tensor(output).float()
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(
            f"model {model!r} returned shape {tuple(logits.shape)} for {n} images; expected logits (N, classes)"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(f"model {model!r} has {logits.shape[1]} outputs but the data has {num_classes} classes")
    return logits


class PredictionStore:
    """Predictions saved to an ``.npz`` file as they are made, so an interrupted run resumes where it
    stopped. Entries are per (model key, condition, batch): the model key identifies the weights (e.g. their
    sha256), the batch is named by its index range and a digest of its images, and the file name should
    fingerprint the rest (data set, seed, table, implementation). Because entries are per batch, a run on
    the first N images is reused by a later run on more images with the same batch size."""

    def __init__(self, path: str | os.PathLike, flush_seconds: float = 60.0) -> None:
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        self.entries: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path) as saved:
                self.entries = {k: saved[k] for k in saved.files}
        self._last_flush = time.monotonic()
        self._dirty = False

    @staticmethod
    def _key(model_key: str, condition: Condition, batch: str, what: str) -> str:
        return f"{model_key}|{condition[0]}|{condition[1]}|{batch}|{what}"

    def get(self, model_key: str, condition: Condition, batch: str) -> tuple[np.ndarray, np.ndarray] | None:
        pred = self.entries.get(self._key(model_key, condition, batch, "pred"))
        conf = self.entries.get(self._key(model_key, condition, batch, "conf"))
        return None if pred is None or conf is None else (pred.astype(np.int64), conf.astype(np.float32))

    def put(self, model_key: str, condition: Condition, batch: str, pred: np.ndarray, conf: np.ndarray) -> None:
        self.entries[self._key(model_key, condition, batch, "pred")] = pred.astype(np.int32)
        self.entries[self._key(model_key, condition, batch, "conf")] = conf.astype(np.float32)
        self._dirty = True
        if time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp.npz")
        np.savez(partial, **self.entries)
        partial.replace(self.path)  # atomic: a crash mid-write never corrupts the store
        self._last_flush = time.monotonic()
        self._dirty = False


def run_fingerprint(data: LabelledImages, seed: int, table: str | None, corruption_version: str) -> str:
    """A hash of what, besides the model, the condition and the batch's images, decides a prediction."""
    text = f"{data.name}|{data.split}|{data.image_size}|{seed}|{table}|{corruption_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def batch_id(images: torch.Tensor, start: int) -> str:
    """Names a batch by its index range (corruption randomness is keyed by index) and its pixels."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{start}-{start + len(images)}-{digest}"


def corrupt_uint8(
    images: torch.Tensor,
    condition: Condition,
    indices: torch.Tensor,
    *,
    seed: int,
    table: str | None,
    device: torch.device,
) -> torch.Tensor:
    """uint8 images -> the same images corrupted and quantised, as every model sees them."""
    from dyntta.corruptions import corrupt  # imported here so the report maths does not need the suite

    if condition == CLEAN:
        return images
    out = corrupt(to_float(images).to(device), condition[0], condition[1], seed=seed, table=table, indices=indices)
    return quantise(out).cpu()


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
    store: PredictionStore | None = None,
    model_keys: Mapping[str, str] | None = None,
) -> tuple[PredictionTable, dict[Condition, torch.Tensor]]:
    """Predictions of every classifier on the clean images and every (corruption, severity).

    With a ``store`` and a ``model_keys`` entry for a model, its predictions are read from and written to
    the store, per batch (a batch that every model has seen is neither corrupted nor classified again).
    """
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
    keys = dict(model_keys or {}) if store is not None else {}
    conditions = table_out.conditions()
    starts = list(range(0, n, batch_size))
    batch_ids = [batch_id(data.images[s : s + batch_size], s) for s in starts] if keys else []
    device = torch.device(device)
    total = len(conditions) * len(starts)
    bar = tqdm(total=total, desc="report", unit="batch", disable=not show_progress, dynamic_ncols=True)
    done = 0
    try:
        for condition in conditions:
            bar.set_postfix_str("clean" if condition == CLEAN else f"{condition[0]} s{condition[1]}")
            preds: dict[str, list[np.ndarray]] = {m: [] for m in classifiers}
            confs: dict[str, list[np.ndarray]] = {m: [] for m in classifiers}
            for b, start in enumerate(starts):
                images = data.images[start : start + batch_size]
                cached = {m: store.get(keys[m], condition, batch_ids[b]) for m in keys}  # type: ignore[union-attr]
                todo = {m: fn for m, fn in classifiers.items() if cached.get(m) is None}
                if todo:  # corrupt only when some model has not seen this batch yet
                    indices = torch.arange(start, start + len(images))
                    batch = corrupt_uint8(images, condition, indices, seed=seed, table=table, device=device)
                for model in classifiers:
                    hit = cached.get(model)
                    if hit is None:
                        logits = _as_logits(todo[model](batch), len(images), num_classes, model)
                        confidence, predicted = logits.softmax(dim=1).max(dim=1)
                        hit = (predicted.numpy().astype(np.int64), confidence.numpy().astype(np.float32))
                        if model in keys:
                            store.put(keys[model], condition, batch_ids[b], *hit)  # type: ignore[union-attr]
                    preds[model].append(hit[0])
                    confs[model].append(hit[1])
                done += 1
                bar.update(1)
                if progress_callback is not None:
                    progress_callback(done / total)
            for model in classifiers:
                table_out.models[model].predicted[condition] = np.concatenate(preds[model])
                table_out.models[model].confidence[condition] = np.concatenate(confs[model])
    finally:
        bar.close()
        if store is not None:
            store.flush()
    # The sample images are re-made from their indices: corruption is keyed per image, so they are exactly
    # the images the models saw (also for conditions read from the store).
    wanted = sorted({i for i in sample_indices if 0 <= i < n})
    samples: dict[Condition, torch.Tensor] = {}
    if wanted:
        index = torch.tensor(wanted)
        for condition in conditions:
            samples[condition] = corrupt_uint8(
                data.images[index], condition, index, seed=seed, table=table, device=device
            )
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
    cache_dir: str | os.PathLike | None = None,
    model_keys: Mapping[str, str] | None = None,
) -> ReportRun:
    """Evaluate ``classify_fn`` (uint8 NCHW batch -> logits) on ``data`` clean and corrupted; report.

    - ``classify_fn`` may be a mapping ``{name: fn}`` to compare models on the same corrupted images
      (e.g. ``{"recognizer": r, "enhancer + recognizer": e}``); a single callable is named ``"model"``.
    - ``reference``: a callable evaluated in the same pass (CE/mCE relative to it), fixed
      :class:`ReferenceErrors` (e.g. AlexNet, for true ImageNet-C only), or ``None`` (no CE).
    - ``progress_callback(fraction)`` is called after every batch, fraction in (0, 1].
    - ``header`` entries (model info, command, ...) are merged over the data/corruption/protocol header.
    - ``cache_dir`` + ``model_keys`` ({model name: a key identifying its weights}): predictions are kept
      in ``cache_dir`` as they are made, and a rerun of an interrupted report resumes from them.
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
    store = None
    if cache_dir is not None and model_keys:
        fingerprint = run_fingerprint(data, seed, corruption_info["table"], corruption_info["version"])
        store = PredictionStore(Path(cache_dir) / f"predictions-{fingerprint}.npz")
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
        store=store,
        model_keys=model_keys,
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
            "prediction_cache": str(store.path) if store else None,
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
    "PredictionStore",
    "batch_id",
    "corrupt_uint8",
    "run_fingerprint",
    "ProgressCallback",
    "ReportRun",
    "collect_predictions",
    "corruption_implementation",
    "quantise",
    "run_report",
]
