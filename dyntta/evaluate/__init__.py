"""Corruption-robustness reports: ``python -m dyntta.evaluate`` and the API behind it.

- :func:`run_report` evaluates any ``classify_fn`` (uint8 NCHW batch -> logits) clean and corrupted and
  returns a :class:`ReportRun` (``.report`` is the JSON-ready dict of format ``FORMAT``);
- :func:`build_report` is the pure part: numbers from a :class:`PredictionTable`;
- :func:`write_outputs` writes report.json, report.md and the PNG figures.
"""

from dyntta.evaluate.classifiers import (
    Classifier,
    ClassifyFn,
    ModelInfo,
    OnnxClassifier,
    TorchClassifier,
    load_classifier,
    load_enhanced_classifier,
)
from dyntta.evaluate.outputs import write_outputs
from dyntta.evaluate.report import (
    ALL_NAMES,
    CORE_GROUPS,
    CORE_NAMES,
    EXTRA_NAMES,
    FORMAT,
    SEVERITIES,
    ModelPredictions,
    PredictionTable,
    ReferenceErrors,
    alexnet_imagenet_c_reference,
    build_report,
    resolve_conditions,
    wilson_interval,
)
from dyntta.evaluate.runner import ReportRun, collect_predictions, run_report
from dyntta.evaluate.writers import read_json, render_markdown, write_json, write_markdown

__all__ = [
    "ALL_NAMES",
    "CORE_GROUPS",
    "CORE_NAMES",
    "EXTRA_NAMES",
    "FORMAT",
    "SEVERITIES",
    "Classifier",
    "ClassifyFn",
    "ModelInfo",
    "ModelPredictions",
    "OnnxClassifier",
    "PredictionTable",
    "ReferenceErrors",
    "ReportRun",
    "TorchClassifier",
    "alexnet_imagenet_c_reference",
    "build_report",
    "collect_predictions",
    "load_classifier",
    "load_enhanced_classifier",
    "read_json",
    "render_markdown",
    "resolve_conditions",
    "run_report",
    "wilson_interval",
    "write_json",
    "write_markdown",
    "write_outputs",
]
