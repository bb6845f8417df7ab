"""The robustness report as typed pydantic models: the one shape that the builder fills and the Markdown
writer, the plots, the gateway's HTML page and its OpenAPI schema read.

Torch-free and numpy-free on purpose: the gateway imports this module without the ML stack.

The JSON layout is format ``dyntta.robustness-report/1`` as written since the first reports
(``docs/reports/*/report.json`` load and dump back unchanged): fields that older reports leave out are
``None`` here and left out again on dump (``_absent_if_none``); severity keys are ints here and the strings
``"1"``..``"5"`` in JSON. All numbers are fractions (accuracy 0.913, CE 0.767), never percent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT: Final = "dyntta.robustness-report/1"
UNITS = (
    "fractions: accuracy, error and CE (model error / reference error) in [0, 1]-scale; "
    "multiply by 100 for percent (reference = 100)"
)


def _absent_if_none(default: Any = None, description: str | None = None) -> Any:
    """A field that older reports omit: ``None`` in Python, no key in JSON."""
    return Field(default=default, description=description, exclude_if=lambda value: value is None)


class _Strict(BaseModel):
    """Computed results: an unknown key means a different format, so reading fails loudly."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """Descriptive header parts: callers may record more (the gateway adds its own), kept verbatim."""

    model_config = ConfigDict(extra="allow")


# --- Results of one model -------------------------------------------------------------------------------


class CleanResult(_Strict):
    accuracy: float
    correct: int
    n: int
    ci95: tuple[float, float] = Field(description="95 % interval of the clean accuracy")
    interval: str = "Wilson score, 95 %"


class WorstCorruption(_Strict):
    name: str
    accuracy: float


class BlockSummary(_Strict):
    """Means over one block of corruptions: the ImageNet-C ones (``core``) or the extras."""

    per_corruption: dict[str, float] = Field(description="mean over the evaluated severities")
    per_severity: dict[int, float | None] = Field(description="mean over the block's corruptions")
    mean: float
    per_group: dict[str, float | None] | None = _absent_if_none(description="core only: mean per group")
    severity5_mean: float | None = None
    gap: float = Field(description="clean accuracy minus the block's mean")
    worst_corruption: WorstCorruption


class Calibration(_Strict):
    ece: dict[str, float | None] = Field(
        description="expected calibration error: key 'clean', and one per severity ('1'..'5') pooling the core"
    )
    bins: int
    over: str


class CorruptionErrors(_Strict):
    """CE and mCE against the report's reference (ImageNet-C corruptions only)."""

    reference: str
    per_corruption: dict[str, float | None]
    mce: float | None
    relative_per_corruption: dict[str, float | None]
    relative_mce: float | None
    undefined: list[str] = Field(description="corruptions whose CE or relative CE is undefined")
    complete: bool = Field(description="all 15 x 5 conditions: comparable with published mCE")


class ModelResults(_Strict):
    clean: CleanResult
    accuracy: dict[str, dict[int, float]] = Field(description="accuracy per corruption and severity")
    core: BlockSummary | None
    extras: BlockSummary | None
    calibration: Calibration | None = _absent_if_none(description="when the classifier's confidences are known")
    ce: CorruptionErrors | None = _absent_if_none(description="when the report has a CE reference")

    def at(self, corruption: str, severity: int) -> float:
        return self.accuracy[corruption][severity]

    def block_means(self) -> dict[str, float]:
        """Mean accuracy over severities per corruption, core and extras together."""
        out: dict[str, float] = {}
        for block in (self.core, self.extras):
            if block is not None:
                out.update(block.per_corruption)
        return out


# --- The reference and the conditions -------------------------------------------------------------------


class ReferenceBlock(_Strict):
    """The CE reference: a model evaluated in the same run (``results``) or fixed published errors."""

    name: str
    source: str
    results: ModelResults | None = _absent_if_none(description="a reference model of this run")
    clean_error: float | None = _absent_if_none(description="fixed reference: clean top-1 error")
    errors: dict[str, dict[int, float]] | None = _absent_if_none(
        description="fixed reference: top-1 error per corruption and severity"
    )


class Conditions(_Strict):
    corruptions: list[str]
    severities: list[int]
    core: list[str] = Field(description="the evaluated ImageNet-C corruptions (mCE and the means are over these)")
    extras: list[str] = Field(description="the evaluated extra corruptions, reported apart")
    groups: dict[str, list[str]]


# --- The header: what was evaluated, how, by what -------------------------------------------------------


class ModelDescription(_Open):
    """A model as the header records it (``dyntta.evaluate.classifiers.ModelInfo``)."""

    role: str | None = _absent_if_none(description="part of a composed model: 'enhancer' or 'recognizer'")
    name: str | None = _absent_if_none()
    path: str | None = _absent_if_none()
    kind: str | None = _absent_if_none()
    sha256: str | None = _absent_if_none(description="of the weights file(s)")
    arch: str | None = _absent_if_none()
    num_parameters: int | None = _absent_if_none()
    input_size: int | None = _absent_if_none()
    classes: list[str] | None = _absent_if_none()
    components: list[ModelDescription] | None = _absent_if_none()
    metadata: dict[str, str] | None = _absent_if_none()


class DataInfo(_Open):
    name: str
    split: str
    n: int
    image_size: int
    classes: list[str]
    preprocessing: str | None = _absent_if_none()


class CorruptionInfo(_Open):
    implementation: str
    version: str
    table: str
    table_requested: str | None = None
    description: str | None = _absent_if_none()
    parameters: dict[str, list[Any]] = Field(default_factory=dict)


class EvaluationProtocol(_Open):
    corruption: str
    jpeg_reencode: bool
    quantisation: str
    determinism: str | None = _absent_if_none()


class RunInfo(_Open):
    seconds: float
    device: str
    batch_size: int
    images_classified: int
    cpu_count: int | None = None
    torch_threads: int | None = None
    platform: str | None = None
    prediction_cache: str | None = None


class ReportHeader(_Open):
    """Every field is optional: a report built from a bare prediction table has an empty header."""

    dyntta_version: str | None = _absent_if_none()
    created: str | None = _absent_if_none(description="ISO 8601, UTC")
    data: DataInfo | None = _absent_if_none()
    seed: int | None = _absent_if_none(description="corruption seed")
    corruptions: CorruptionInfo | None = _absent_if_none()
    protocol: EvaluationProtocol | None = _absent_if_none()
    run: RunInfo | None = _absent_if_none()
    model: ModelDescription | None = _absent_if_none(description="the evaluated (first) model")
    enhancer: ModelDescription | None = _absent_if_none()
    tta: str | None = _absent_if_none(description="test-time adaptation, if any")
    reference: ModelDescription | None = _absent_if_none(description="the CE reference model")
    reference_note: str | None = _absent_if_none()
    command: str | None = _absent_if_none()
    config: dict[str, Any] | None = _absent_if_none(description="the command's options")
    job: dict[str, Any] | None = _absent_if_none(description="gateway jobs: id, source, submission time")
    served_by: dict[str, str] | None = _absent_if_none(description="gateway jobs: gateway and Triton models")

    def merged(self, extra: ReportHeader | dict[str, Any] | None) -> ReportHeader:
        """This header with ``extra``'s entries over it (top-level keys replaced, as ``dict.update``)."""
        if extra is None:
            return self
        update = extra.model_dump() if isinstance(extra, ReportHeader) else dict(extra)
        return ReportHeader.model_validate({**self.model_dump(), **update})


# --- The enhancer strip ---------------------------------------------------------------------------------


class StripSample(_Strict):
    """One test image under one corruption: its true class and each model's prediction of the corrupted
    image (the very prediction the accuracy tables count)."""

    index: int = Field(description="index of the image in the evaluated test set")
    label: int = Field(description="true class (index into ``EnhancerStrip.classes``)")
    predicted: dict[str, int] = Field(description="model name -> predicted class of the corrupted image")


class StripRow(_Strict):
    """The strip's images for one corruption, and the PNG that shows them."""

    corruption: str
    group: str
    samples: list[StripSample]
    file: str | None = Field(default=None, description="PNG relative to the report; None: figures not drawn")


class EnhancerStrip(_Strict):
    """What the enhancer does to a few fixed test images: clean | corrupted | enhanced per corruption, with
    the recognizer-alone prediction of the corrupted image and the enhancer + recognizer prediction."""

    severity: int = Field(description="the severity every strip image is corrupted at")
    indices: list[int] = Field(description="the test images shown, the same for every corruption")
    classes: list[str]
    alone: str = Field(description="model whose prediction is shown under the corrupted image")
    enhanced: str = Field(description="model whose prediction is shown under the enhanced image")
    enhanced_by: str = Field(description="where the enhanced images come from")
    rows: list[StripRow]
    curves_file: str | None = Field(
        default=None, description="PNG: accuracy vs severity of both models, one panel per group"
    )

    def files(self) -> list[str]:
        """The strip PNGs, one per corruption group, in row order."""
        return list(dict.fromkeys(row.file for row in self.rows if row.file))

    def tally(self) -> dict[str, tuple[int, int]]:
        """Per compared model: (right, shown) over the strip's corrupted images."""
        shown = [s for row in self.rows for s in row.samples]
        return {m: (sum(s.predicted[m] == s.label for s in shown), len(shown)) for m in (self.alone, self.enhanced)}

    def caption(self) -> str:
        """What the strip shows, one paragraph (Markdown code spans for names): the report's and the page's."""
        tally = "; ".join(f"`{m}` {right} of {n}" for m, (right, n) in self.tally().items())
        return (
            f"Test images {', '.join(map(str, self.indices))} (fixed, not chosen by result) under each corruption "
            f"at severity {self.severity}: clean | corrupted, with the prediction of `{self.alone}` | enhanced, "
            f"with the prediction of `{self.enhanced}`; ✓ green right, ✗ red wrong. Enhanced images: "
            f"{self.enhanced_by}. Right on these corrupted images: {tally}."
        )


# --- The report -----------------------------------------------------------------------------------------


class Report(_Strict):
    """A robustness report. ``models`` keeps order: the first model is the primary one."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")

    format: Literal["dyntta.robustness-report/1"] = FORMAT
    header: ReportHeader = Field(default_factory=ReportHeader)
    conditions: Conditions
    units: str = UNITS
    models: dict[str, ModelResults] = Field(description="compared models; the CE reference is apart")
    reference: ReferenceBlock | None = None
    enhancer_strip: EnhancerStrip | None = _absent_if_none(
        description="the enhancer's work on a few images (reports comparing enhancer + recognizer)"
    )

    @property
    def primary(self) -> str:
        return next(iter(self.models))

    def to_json(self) -> str:
        """The on-disk text: 2-space indented, NaN written as null (JSON has no NaN)."""
        return json.dumps(_finite(self.model_dump(mode="json")), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Report:
        return read_report(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_report(path: str | os.PathLike[str]) -> Report:
    """Load a report file; ``ValueError`` naming the file for another format or a malformed report."""
    data = json.loads(Path(path).read_text())
    found = data.get("format") if isinstance(data, dict) else None
    if found != FORMAT:
        raise ValueError(f"{path}: format {found!r}, expected {FORMAT!r}")
    return Report.model_validate(data)


def write_report(report: Report, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    return path


__all__ = [
    "FORMAT",
    "UNITS",
    "BlockSummary",
    "Calibration",
    "CleanResult",
    "Conditions",
    "CorruptionErrors",
    "CorruptionInfo",
    "DataInfo",
    "EnhancerStrip",
    "ModelDescription",
    "ModelResults",
    "EvaluationProtocol",
    "ReferenceBlock",
    "Report",
    "ReportHeader",
    "RunInfo",
    "StripRow",
    "StripSample",
    "WorstCorruption",
    "read_report",
    "write_report",
]
