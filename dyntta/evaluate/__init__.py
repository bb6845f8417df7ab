"""Corruption-robustness reports: ``python -m dyntta.evaluate`` and the API behind it.

- :func:`run_report` evaluates any ``classify_fn`` (uint8 NCHW batch -> logits) clean and corrupted under
  :class:`ReportOptions` and returns a :class:`ReportRun` (``.report`` is the typed :class:`Report`);
- :func:`build_report` is the pure part: numbers from a :class:`PredictionTable`;
- :func:`write_outputs` writes report.json, report.md and the PNG figures.

The package face is lazy (PEP 562): ``import dyntta.evaluate.schema`` (the report model, what the gateway
reads) loads neither torch nor matplotlib; a name below imports its submodule on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "Classifier": "classifiers",
    "ClassifyFn": "classifiers",
    "ModelInfo": "classifiers",
    "OnnxClassifier": "classifiers",
    "TorchClassifier": "classifiers",
    "load_classifier": "classifiers",
    "load_enhanced_classifier": "classifiers",
    "write_outputs": "outputs",
    "ModelPredictions": "report",
    "PredictionTable": "report",
    "ReferenceErrors": "report",
    "alexnet_imagenet_c_reference": "report",
    "build_report": "report",
    "wilson_interval": "report",
    "FORMAT": "schema",
    "ModelResults": "schema",
    "Report": "schema",
    "ReportHeader": "schema",
    "read_report": "schema",
    "ReportOptions": "runner",
    "ReportRun": "runner",
    "collect_predictions": "runner",
    "run_report": "runner",
    "read_json": "writers",
    "render_markdown": "writers",
    "write_json": "writers",
    "write_markdown": "writers",
}

__all__ = [
    "Classifier",
    "ClassifyFn",
    "FORMAT",
    "ModelInfo",
    "ModelPredictions",
    "ModelResults",
    "OnnxClassifier",
    "PredictionTable",
    "ReferenceErrors",
    "Report",
    "ReportHeader",
    "ReportOptions",
    "ReportRun",
    "TorchClassifier",
    "alexnet_imagenet_c_reference",
    "build_report",
    "collect_predictions",
    "load_classifier",
    "load_enhanced_classifier",
    "read_json",
    "read_report",
    "render_markdown",
    "run_report",
    "wilson_interval",
    "write_json",
    "write_markdown",
    "write_outputs",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing here runs
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
        ModelPredictions,
        PredictionTable,
        ReferenceErrors,
        alexnet_imagenet_c_reference,
        build_report,
        wilson_interval,
    )
    from dyntta.evaluate.runner import ReportOptions, ReportRun, collect_predictions, run_report
    from dyntta.evaluate.schema import FORMAT, ModelResults, Report, ReportHeader, read_report
    from dyntta.evaluate.writers import read_json, render_markdown, write_json, write_markdown
