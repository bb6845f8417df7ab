"""Run a robustness report: models + data + :class:`ReportOptions` -> :class:`ReportRun` (the typed
report, the predictions it was computed from and sample images).

The work is :func:`dyntta.evaluate.predictions.collect_predictions`; this module adds the options, the
prediction cache (a wrapper around each model) and the report header: what was evaluated, how, by what.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dyntta.data import LabelledImages
from dyntta.evaluate.classifiers import ClassifyFn
from dyntta.evaluate.predictions import (
    CachedPredictor,
    ClassifierPredictor,
    Corruption,
    PredictionCache,
    PredictionStore,
    Predictor,
    ProgressCallback,
    Sweep,
    batch_id,
    collect_predictions,
    corrupt_uint8,
    quantise,
)
from dyntta.evaluate.report import Condition, PredictionTable, ReferenceErrors, build_report, resolve_conditions
from dyntta.evaluate.schema import CorruptionInfo, DataInfo, EvaluationProtocol, Report, ReportHeader, RunInfo
from dyntta.evaluate.strip import StripImages, StripSpec, make_strip
from dyntta.version import __version__

REFERENCE_KEY = "reference"

PROTOCOL = EvaluationProtocol(
    corruption="in memory (on the fly) with dyntta.corruptions, not the released -C files",
    jpeg_reencode=False,
    quantisation="each corrupted float image is rounded to uint8 before classification (as stored -C "
    "sets and as the server receives images)",
    determinism="corruption randomness derived from (seed, image index, corruption, severity): the same "
    "image gets the same corruption whatever the batch size; every model sees the same images",
)


@dataclass(frozen=True)
class ReportOptions:
    """What to evaluate and how: everything a run needs besides the models, the data and the header.

    ``cache_dir`` + ``model_keys`` ({model name: a key identifying its weights}): predictions are kept in
    ``cache_dir`` as they are made, and a rerun of an interrupted report resumes from them.
    """

    corruptions: Sequence[str] | None = None  # names or groups; None: all 19
    severities: Sequence[int] | None = None  # None: 1 to 5
    seed: int = 0  # corruption seed
    table: str | None = None  # corruption parameter table; None: by image size
    batch_size: int = 256
    device: str | torch.device = "cpu"  # where corruptions run (classifiers place themselves)
    sample_indices: Sequence[int] = (0,)  # images kept for the sample grid
    show_progress: bool = False
    reference_name: str = REFERENCE_KEY  # the name of a reference classifier in the prediction table
    cache_dir: str | os.PathLike[str] | None = None
    model_keys: Mapping[str, str] | None = None


@dataclass
class ReportRun:
    """A finished run: the report, the predictions it was computed from and sample images."""

    report: Report
    predictions: PredictionTable
    samples: dict[Condition, torch.Tensor] = field(default_factory=dict)  # uint8 (k, 3, S, S) per condition
    sample_indices: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    strip_images: StripImages | None = None  # the enhancer strip's pixels (``report.enhancer_strip``)


def corruption_implementation(table: str | None, image_size: int, corruptions: Sequence[str] = ()) -> CorruptionInfo:
    """Implementation, version, parameter table (name and the values used) of the corruption suite."""
    from dyntta.corruptions import IMPLEMENTATION_VERSION, TABLE_NAMES, TABLES, default_table, describe

    if table is not None and table not in TABLE_NAMES:
        raise ValueError(f"unknown corruption parameter table {table!r}; expected one of {TABLE_NAMES}")
    resolved = table or default_table(image_size, image_size)
    return CorruptionInfo(
        implementation="dyntta.corruptions",
        version=str(IMPLEMENTATION_VERSION),
        table=resolved,
        table_requested=table,
        description=describe(table),
        parameters={c: [list(p) if isinstance(p, tuple) else p for p in TABLES[resolved][c]] for c in corruptions},
    )


def run_fingerprint(data: LabelledImages, seed: int, table: str | None, corruption_version: str) -> str:
    """A hash of what, besides the model, the condition and the batch's images, decides a prediction."""
    text = f"{data.name}|{data.split}|{data.image_size}|{seed}|{table}|{corruption_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _predictors(
    classifiers: Mapping[str, ClassifyFn],
    num_classes: int,
    cache: PredictionCache | None,
    model_keys: Mapping[str, str],
) -> dict[str, Predictor]:
    """Each classifier as a predictor; those with a model key behind the cache."""
    predictors: dict[str, Predictor] = {}
    for name, fn in classifiers.items():
        predictor: Predictor = ClassifierPredictor(name, fn, num_classes)
        if cache is not None and name in model_keys:
            predictor = CachedPredictor(predictor, cache, model_keys[name])
        predictors[name] = predictor
    return predictors


def _header(
    data: LabelledImages,
    options: ReportOptions,
    corruption: CorruptionInfo,
    run: RunInfo,
    extra: ReportHeader | Mapping[str, Any] | None,
) -> ReportHeader:
    """What was evaluated and how; ``extra`` (model info, command, ...) is merged over it."""
    base = ReportHeader(
        dyntta_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        data=DataInfo(
            name=data.name,
            split=data.split,
            n=len(data),
            image_size=data.image_size,
            classes=list(data.classes),
            preprocessing="RGB uint8 at the model's input size (dyntta.data.to_model_input, bilinear)",
        ),
        seed=options.seed,
        corruptions=corruption,
        protocol=PROTOCOL,
        run=run,
    )
    return base.merged(extra if isinstance(extra, ReportHeader) or extra is None else dict(extra))


def run_report(
    classify_fn: ClassifyFn | Mapping[str, ClassifyFn],
    data: LabelledImages,
    options: ReportOptions | None = None,
    *,
    reference: ClassifyFn | ReferenceErrors | None = None,
    header: ReportHeader | Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cache: PredictionCache | None = None,
    strip: StripSpec | None = None,
) -> ReportRun:
    """Evaluate ``classify_fn`` (uint8 NCHW batch -> logits) on ``data`` clean and corrupted; report.

    - ``classify_fn`` may be a mapping ``{name: fn}`` to compare models on the same corrupted images
      (e.g. ``{"recognizer": r, "enhancer + recognizer": e}``); a single callable is named ``"model"``.
    - ``reference``: a callable evaluated in the same pass (CE/mCE relative to it), fixed
      :class:`ReferenceErrors` (e.g. AlexNet, for true ImageNet-C only), or ``None`` (no CE).
    - ``header`` entries (model info, command, ...) are merged over the data/corruption/protocol header.
    - ``progress(fraction)`` is called after every batch, fraction in (0, 1].
    - ``cache``: a prediction cache of the caller's (e.g. the gateway's job store), used for the models
      of ``options.model_keys``; without one, ``options.cache_dir`` holds a :class:`PredictionStore`.
    - ``strip``: the enhancer and the two models to compare in ``report.enhancer_strip`` (clean |
      corrupted | enhanced for a few images per corruption); the pixels are in ``ReportRun.strip_images``.
    """
    options = options or ReportOptions()
    classifiers = dict(classify_fn) if isinstance(classify_fn, Mapping) else {"model": classify_fn}
    reference_key: str | None = None
    if reference is not None and not isinstance(reference, ReferenceErrors):
        if options.reference_name in classifiers:
            raise ValueError(f"reference name {options.reference_name!r} clashes with a compared model's name")
        classifiers[options.reference_name] = reference
        reference_key = options.reference_name
    names, levels = resolve_conditions(options.corruptions, options.severities)
    corruption_info = corruption_implementation(options.table, data.image_size, names)  # also validates ``table``
    model_keys = dict(options.model_keys or {})
    if cache is None and options.cache_dir is not None and model_keys:
        fingerprint = run_fingerprint(data, options.seed, corruption_info.table, corruption_info.version)
        cache = PredictionStore(Path(options.cache_dir) / f"predictions-{fingerprint}.npz")
    device = torch.device(options.device)
    sweep = Sweep(
        corruptions=names,
        severities=levels,
        corruption=Corruption(options.seed, options.table, device),
        batch_size=options.batch_size,
        sample_indices=options.sample_indices,
        show_progress=options.show_progress,
    )
    started = time.perf_counter()
    try:
        predictions, samples = collect_predictions(
            _predictors(classifiers, len(data.classes), cache, model_keys), data, sweep, progress
        )
    finally:
        if cache is not None:
            cache.flush()
    run = RunInfo(
        seconds=round(time.perf_counter() - started, 1),
        device=str(device),
        batch_size=options.batch_size,
        images_classified=len(data) * len(predictions.conditions()) * len(classifiers),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        platform=platform.platform(terse=True),
        prediction_cache=str(cache.path) if isinstance(cache, PredictionStore) else None,
    )
    report = build_report(
        predictions,
        _header(data, options, corruption_info, run, header),
        reference=reference_key if reference_key else reference,  # type: ignore[arg-type]
    )
    strip_images = None
    if strip is not None:
        report.enhancer_strip, strip_images = make_strip(strip, data, predictions, sweep.corruption)
    return ReportRun(
        report=report,
        predictions=predictions,
        samples=samples,
        sample_indices=sorted({i for i in options.sample_indices if 0 <= i < len(data)}),
        classes=list(data.classes),
        strip_images=strip_images,
    )


__all__ = [
    "PROTOCOL",
    "PredictionStore",
    "ProgressCallback",
    "ReportOptions",
    "ReportRun",
    "StripSpec",
    "batch_id",
    "collect_predictions",
    "corrupt_uint8",
    "corruption_implementation",
    "quantise",
    "run_fingerprint",
    "run_report",
]
