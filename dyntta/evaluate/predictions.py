"""Fill a prediction table: corrupt each batch once, hand it to every model, keep what they predict.

Every model (the recognizer alone, enhancer + recognizer, the CE reference) sees the very same corrupted
uint8 images: each batch is corrupted once per condition and handed to all of them, which makes the
comparison and the CE fair by construction and costs one corruption pass instead of one per model.

A model is a :class:`Predictor` (batch -> predicted classes and confidences). :class:`ClassifierPredictor`
wraps a logits function; :class:`CachedPredictor` wraps any predictor with a :class:`PredictionCache`, so
a resumed run skips what it has seen. A :class:`Batch` is corrupted lazily, on the first model that looks
at its pixels: a batch every model finds in its cache is never corrupted.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from dyntta.data import LabelledImages, to_float
from dyntta.evaluate.classifiers import ClassifyFn
from dyntta.evaluate.report import CLEAN, Condition, ModelPredictions, PredictionTable, resolve_conditions

ProgressCallback = Callable[[float], None]
#: Predicted class (int64) and max-softmax confidence (float32) per image of a batch.
Prediction = tuple[np.ndarray, np.ndarray]


def quantise(images: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, rounding to nearest (truncation would darken every image by half a level)."""
    return images.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


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


def batch_id(images: torch.Tensor, start: int) -> str:
    """Names a batch by its index range (corruption randomness is keyed by index) and its pixels."""
    digest = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{start}-{start + len(images)}-{digest}"


# --- Batches --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """How a condition's images are made: the suite's seed and parameter table, and where it runs."""

    seed: int = 0
    table: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def apply(self, images: torch.Tensor, condition: Condition, start: int) -> torch.Tensor:
        indices = torch.arange(start, start + len(images))
        return corrupt_uint8(images, condition, indices, seed=self.seed, table=self.table, device=self.device)


class Slice:
    """Clean images ``[start, start + len)`` of the data set; their cache key is hashed once, when asked."""

    def __init__(self, images: torch.Tensor, start: int) -> None:
        self.images, self.start = images, start

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def key(self) -> str:
        return batch_id(self.images, self.start)


class Batch:
    """One slice under one condition; its pixels are corrupted on first access, then shared."""

    def __init__(self, part: Slice, condition: Condition, corruption: Corruption) -> None:
        self.part, self.condition, self._corruption = part, condition, corruption

    def __len__(self) -> int:
        return len(self.part)

    @property
    def key(self) -> str:
        return self.part.key

    @cached_property
    def images(self) -> torch.Tensor:
        """uint8 (n, 3, S, S), corrupted and quantised."""
        return self._corruption.apply(self.part.images, self.condition, self.part.start)


# --- Predictors -----------------------------------------------------------------------------------------


class Predictor(Protocol):
    def predict(self, batch: Batch) -> Prediction: ...


def _as_logits(output: torch.Tensor | np.ndarray, n: int, num_classes: int, model: str) -> torch.Tensor:
    logits = torch.as_tensor(output).float()
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(
            f"model {model!r} returned shape {tuple(logits.shape)} for {n} images; expected logits (N, classes)"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(f"model {model!r} has {logits.shape[1]} outputs but the data has {num_classes} classes")
    return logits


@dataclass
class ClassifierPredictor:
    """A logits function as a predictor: argmax class and max-softmax confidence."""

    name: str
    classify: ClassifyFn
    num_classes: int

    def predict(self, batch: Batch) -> Prediction:
        logits = _as_logits(self.classify(batch.images), len(batch), self.num_classes, self.name)
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        return predicted.numpy().astype(np.int64), confidence.numpy().astype(np.float32)


class PredictionCache(Protocol):
    """Saved predictions per (model key, condition, batch key); the gateway's job store is one too."""

    def get(self, model_key: str, condition: Condition, batch: str) -> Prediction | None: ...

    def put(self, model_key: str, condition: Condition, batch: str, pred: np.ndarray, conf: np.ndarray) -> None: ...

    def flush(self) -> None: ...


@dataclass
class CachedPredictor:
    """``inner`` behind a cache: a batch found under ``model_key`` is neither corrupted nor classified."""

    inner: Predictor
    cache: PredictionCache
    model_key: str

    def predict(self, batch: Batch) -> Prediction:
        hit = self.cache.get(self.model_key, batch.condition, batch.key)
        if hit is None:
            hit = self.inner.predict(batch)
            self.cache.put(self.model_key, batch.condition, batch.key, *hit)
        return hit


class PredictionStore:
    """Predictions saved to an ``.npz`` file as they are made, so an interrupted run resumes where it
    stopped. Entries are per (model key, condition, batch): the model key identifies the weights (e.g. their
    sha256), the batch is named by its index range and a digest of its images, and the file name should
    fingerprint the rest (data set, seed, table, implementation). Because entries are per batch, a run on
    the first N images is reused by a later run on more images with the same batch size."""

    def __init__(self, path: str | os.PathLike[str], flush_seconds: float = 60.0) -> None:
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

    def get(self, model_key: str, condition: Condition, batch: str) -> Prediction | None:
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


# --- The loop -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """Which conditions to run and how: the selection, the corruption, the batching, the sample images."""

    corruptions: Sequence[str] | None = None
    severities: Sequence[int] | None = None
    corruption: Corruption = field(default_factory=Corruption)
    batch_size: int = 256
    sample_indices: Sequence[int] = ()
    show_progress: bool = False


def _label(condition: Condition) -> str:
    return "clean" if condition == CLEAN else f"{condition[0]} s{condition[1]}"


def collect_predictions(
    predictors: Mapping[str, Predictor],
    data: LabelledImages,
    sweep: Sweep,
    progress: ProgressCallback | None = None,
) -> tuple[PredictionTable, dict[Condition, torch.Tensor]]:
    """Predictions of every predictor on the clean images and every (corruption, severity), and the
    sample images (``sweep.sample_indices``) under every condition."""
    names, levels = resolve_conditions(sweep.corruptions, sweep.severities)
    if not predictors:
        raise ValueError("no classifier to evaluate")
    if sweep.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(data)
    if n == 0:
        raise ValueError("the data set is empty")
    table = PredictionTable(
        labels=data.labels.numpy(),
        corruptions=names,
        severities=levels,
        models={m: ModelPredictions() for m in predictors},
    )
    conditions = table.conditions()
    parts = [Slice(data.images[s : s + sweep.batch_size], s) for s in range(0, n, sweep.batch_size)]
    total = len(conditions) * len(parts)
    bar = tqdm(total=total, desc="report", unit="batch", disable=not sweep.show_progress, dynamic_ncols=True)
    done = 0
    with bar:
        for condition in conditions:
            bar.set_postfix_str(_label(condition))
            outputs: dict[str, list[Prediction]] = {m: [] for m in predictors}
            for part in parts:
                batch = Batch(part, condition, sweep.corruption)
                for model, predictor in predictors.items():
                    outputs[model].append(predictor.predict(batch))
                done += 1
                bar.update(1)
                if progress is not None:
                    progress(done / total)
            for model, predictions in outputs.items():
                table.models[model].predicted[condition] = np.concatenate([p[0] for p in predictions])
                table.models[model].confidence[condition] = np.concatenate([p[1] for p in predictions])
    return table, sample_images(data, conditions, sweep)


def sample_images(data: LabelledImages, conditions: Sequence[Condition], sweep: Sweep) -> dict[Condition, torch.Tensor]:
    """The sample images re-made from their indices: corruption is keyed per image, so they are exactly
    the images the models saw (also for conditions read from a cache)."""
    wanted = sorted({i for i in sweep.sample_indices if 0 <= i < len(data)})
    if not wanted:
        return {}
    index = torch.tensor(wanted)
    c = sweep.corruption
    return {
        condition: corrupt_uint8(data.images[index], condition, index, seed=c.seed, table=c.table, device=c.device)
        for condition in conditions
    }


__all__ = [
    "Batch",
    "CachedPredictor",
    "ClassifierPredictor",
    "Corruption",
    "Prediction",
    "PredictionCache",
    "PredictionStore",
    "Predictor",
    "ProgressCallback",
    "Slice",
    "Sweep",
    "batch_id",
    "collect_predictions",
    "corrupt_uint8",
    "quantise",
    "sample_images",
]
