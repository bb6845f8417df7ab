"""Predictions saved in the job store, so another worker resumes a job where a dead one stopped.

It is a :class:`dyntta.evaluate.predictions.PredictionCache` (get, put, flush), which the report runner
uses to skip batches it has seen: here every ``put`` is written through to the database at
once (fenced by the lease), instead of to an ``.npz`` flushed now and then, because a worker can die at any
moment and the next one may run on another host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from serve.store.models import Job
from serve.store.store import JobStore

Condition = tuple[str, int]
Prediction = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]  # class indices, confidences


class StoredPredictions:
    def __init__(self, store: JobStore, job: Job, on_put: Callable[[], None] | None = None) -> None:
        self.store, self.job = store, job
        self._on_put = on_put or (lambda: None)
        self.entries = store.load_predictions(job.id)
        self.reused = 0

    def get(self, model_key: str, condition: Condition, batch: str) -> Prediction | None:
        hit = self.entries.get((model_key, condition[0], int(condition[1]), batch))
        if hit is None:
            return None
        self.reused += 1
        return np.frombuffer(hit[0], dtype="<i4").astype(np.int64), np.frombuffer(hit[1], dtype="<f4").copy()

    def put(
        self,
        model_key: str,
        condition: Condition,
        batch: str,
        pred: npt.NDArray[np.integer[Any]],
        conf: npt.NDArray[np.floating[Any]],
    ) -> None:
        blobs = (pred.astype("<i4").tobytes(), conf.astype("<f4").tobytes())
        self.store.save_prediction(self.job, model_key, condition[0], int(condition[1]), batch, *blobs)
        self.entries[(model_key, condition[0], int(condition[1]), batch)] = blobs
        self._on_put()

    def flush(self) -> None:
        """Nothing to do: every put is already in the database."""
