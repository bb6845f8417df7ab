"""Sharded evaluation: ``torchrun --nproc_per_node=N -m dyntta.evaluate ...`` splits the report's work units
(condition x image batch) across the N ranks and merges the predictions on rank 0.

Every corrupted image is keyed by (seed, image index, corruption, severity) and every batch is the same
slice of the data as in one process, so each unit's predictions do not depend on which rank made them: rank
0 builds the report from the merged predictions with the single-process code path (its prediction cache
answers every unit), which makes the report equal to the single-process one.

Mechanism: pass 1 runs :func:`~dyntta.evaluate.runner.run_report` on every rank behind a
:class:`ShardCache` that answers units owned by other ranks with placeholders (so they are neither corrupted
nor classified) and records the units the rank computes; pass 2 runs it on rank 0 behind a cache holding
every rank's units (the on-disk prediction store when ``cache_dir`` is set, as in one process).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dyntta import distributed
from dyntta.data import LabelledImages
from dyntta.evaluate.classifiers import ClassifyFn
from dyntta.evaluate.predictions import Prediction, PredictionStore
from dyntta.evaluate.report import Condition, ReferenceErrors, resolve_conditions
from dyntta.evaluate.runner import (
    ReportOptions,
    ReportRun,
    corruption_implementation,
    run_fingerprint,
)
from dyntta.evaluate.runner import run_report as run_report_here

Entry = tuple[str, Condition, str]  # (model key, condition, batch key)


class ShardCache:
    """Pass 1 on one rank: units of other ranks get placeholders; this rank's units are read from
    ``previous`` (an existing prediction store) or computed and recorded in :attr:`made`."""

    def __init__(self, owner: dict[tuple[Condition, int], int], rank: int, previous: PredictionStore | None) -> None:
        self.owner, self.rank, self.previous = owner, rank, previous
        self.made: dict[Entry, Prediction] = {}

    @staticmethod
    def _span(batch: str) -> tuple[int, int]:
        start, stop, _digest = batch.split("-", 2)  # "start-stop-digest" (predictions.batch_id)
        return int(start), int(stop)

    def get(self, model_key: str, condition: Condition, batch: str) -> Prediction | None:
        start, stop = self._span(batch)
        if self.owner[(tuple(condition), start)] != self.rank:  # type: ignore[index]
            return np.zeros(stop - start, dtype=np.int64), np.zeros(stop - start, dtype=np.float32)
        hit = self.previous.get(model_key, condition, batch) if self.previous is not None else None
        if hit is not None:
            self.made[(model_key, tuple(condition), batch)] = hit  # type: ignore[index]
        return hit

    def put(self, model_key: str, condition: Condition, batch: str, pred: np.ndarray, conf: np.ndarray) -> None:
        self.made[(model_key, tuple(condition), batch)] = (pred, conf)  # type: ignore[index]

    def flush(self) -> None:
        """Nothing is written in pass 1; rank 0 writes the merged store in pass 2."""


class MergedCache:
    """Pass 2 on rank 0: every rank's predictions, in memory (``cache_dir`` unset: nothing on disk)."""

    def __init__(self, entries: dict[Entry, Prediction]) -> None:
        self.entries = entries

    def get(self, model_key: str, condition: Condition, batch: str) -> Prediction | None:
        return self.entries.get((model_key, tuple(condition), batch))  # type: ignore[arg-type]

    def put(self, model_key: str, condition: Condition, batch: str, pred: np.ndarray, conf: np.ndarray) -> None:
        self.entries[(model_key, tuple(condition), batch)] = (pred, conf)  # type: ignore[index]

    def flush(self) -> None:
        pass


def without_run_specifics(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report's JSON without what differs between two runs of the same evaluation (when it was made, how
    long it took, the command line and the output directory): what a sharded and a single-process report
    must agree on, field by field."""
    comparable = copy.deepcopy(dict(report))
    header = comparable["header"]
    header.pop("created", None)
    header.pop("command", None)
    header["run"].pop("seconds", None)
    header["config"].pop("out", None)
    return comparable


def unit_owners(
    conditions: list[Condition], n: int, batch_size: int, world_size: int
) -> dict[tuple[Condition, int], int]:
    """(condition, batch start) -> rank, round robin over the condition-major unit order, so every rank gets
    an even share of every corruption's cost."""
    starts = range(0, n, batch_size)
    units = [(tuple(c), s) for c in conditions for s in starts]
    return {unit: i % world_size for i, unit in enumerate(units)}  # type: ignore[misc]


def run_report(
    classify_fn: ClassifyFn | Mapping[str, ClassifyFn],
    data: LabelledImages,
    options: ReportOptions | None = None,
    **kwargs: Any,
) -> ReportRun | None:
    """:func:`dyntta.evaluate.runner.run_report`, sharded when launched by torchrun.

    Returns the report on rank 0 and ``None`` on the other ranks (they write nothing). In one process it is
    exactly ``runner.run_report``.
    """
    options = options or ReportOptions()
    world = distributed.init_from_env(str(options.device))
    if not world.distributed:
        return run_report_here(classify_fn, data, options, **kwargs)
    classifiers = dict(classify_fn) if isinstance(classify_fn, Mapping) else {"model": classify_fn}
    reference = kwargs.get("reference")
    names = set(classifiers) | ({options.reference_name} if callable(reference) else set())
    keys = dict(options.model_keys or {})
    if not names <= set(keys) or kwargs.get("cache") is not None:
        raise ValueError(
            "sharded evaluation needs a model key for every model (and no caller cache): predictions are "
            "exchanged between ranks by key"
        )
    started = time.perf_counter()
    conditions = _conditions(options)
    owner = unit_owners(conditions, len(data), options.batch_size, world.size)
    store_path = _store_path(data, options)
    previous = PredictionStore(store_path) if store_path is not None else None
    shard = ShardCache(owner, world.rank, previous)
    quiet = dataclasses.replace(options, show_progress=options.show_progress and world.is_main, sample_indices=())
    pass_kwargs = {k: v for k, v in kwargs.items() if k in ("reference", "progress")}
    if isinstance(reference, ReferenceErrors):
        pass_kwargs.pop("reference")
    run_report_here(classifiers, data, quiet, cache=shard, **pass_kwargs)
    gathered = distributed.gather_objects(shard.made)
    if not world.is_main:
        distributed.shutdown()
        return None
    distributed.shutdown()
    merged: dict[Entry, Prediction] = {}
    for part in gathered or []:
        merged.update(part)
    if previous is not None:
        for (model_key, condition, batch), (pred, conf) in merged.items():
            previous.put(model_key, condition, batch, pred, conf)
        cache: Any = previous  # the single-process store, now complete: same file, same header field
    else:
        cache = MergedCache(merged)
    result = run_report_here(classifiers, data, options, cache=cache, **kwargs)
    print(
        f"sharded evaluation: {len(owner)} units over {world.size} ranks, {time.perf_counter() - started:.1f} s in all",
        file=sys.stderr,
    )
    return _with_seconds(result, time.perf_counter() - started)


def _conditions(options: ReportOptions) -> list[Condition]:
    from dyntta.evaluate.report import CLEAN

    names, levels = resolve_conditions(options.corruptions, options.severities)
    return [CLEAN] + [(c, s) for c in names for s in levels]


def _store_path(data: LabelledImages, options: ReportOptions) -> Path | None:
    """The prediction store a single process would use (runner.run_report's naming), or None."""
    if options.cache_dir is None or not options.model_keys:
        return None
    names, _ = resolve_conditions(options.corruptions, options.severities)
    info = corruption_implementation(options.table, data.image_size, names)
    return Path(options.cache_dir) / f"predictions-{run_fingerprint(data, options.seed, info.table, info.version)}.npz"


def _with_seconds(result: ReportRun, seconds: float) -> ReportRun:
    """The report's run time is the whole sharded run's, not the merge's."""
    header = result.report.header
    if header is None or header.run is None:
        return result
    run = header.run.model_copy(update={"seconds": round(seconds, 1)})
    result.report = result.report.model_copy(update={"header": header.model_copy(update={"run": run})})
    return result


__all__ = ["MergedCache", "ShardCache", "run_report", "unit_owners"]
