"""The typed report: committed reports load and dump back unchanged, render as committed, and the model's
module stays light enough for the gateway to import."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from dyntta.evaluate.schema import FORMAT, Report, read_report
from dyntta.evaluate.writers import render_markdown

REPO = Path(__file__).resolve().parents[2]
COMMITTED = sorted((REPO / "docs" / "reports").glob("*/report.json"))


def test_there_are_committed_reports() -> None:
    assert len(COMMITTED) >= 2  # the default recognizer's and the enhancer's


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_report_round_trips_byte_for_byte(path: Path) -> None:
    report = read_report(path)
    assert report.models and report.header.data is not None and report.header.data.n >= 1000
    assert report.to_json() == path.read_text()


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_markdown_is_what_the_typed_report_renders(path: Path) -> None:
    """The Markdown writer (one function per section) still writes the committed report.md exactly."""
    report = read_report(path)
    committed = (path.parent / "report.md").read_text()
    figures = {"Accuracy (%) per corruption and severity": "heatmap.png", "Accuracy vs severity": "severity_curves.png"}
    sample = re.search(r"\*\*(Sample corruptions of .*?)\*\*", committed)
    if sample:
        figures[sample.group(1)] = "samples.png"
    assert report.header.config is not None
    assert render_markdown(report, figures, report.header.config["title"]) == committed


def test_other_formats_and_malformed_reports_are_refused(tmp_path: Path) -> None:
    raw = json.loads(COMMITTED[0].read_text())
    (tmp_path / "v2.json").write_text(json.dumps({**raw, "format": "dyntta.robustness-report/2"}))
    with pytest.raises(ValueError, match="format 'dyntta.robustness-report/2'"):
        read_report(tmp_path / "v2.json")
    first = next(iter(raw["models"]))
    del raw["models"][first]["clean"]["accuracy"]
    with pytest.raises(ValidationError, match="accuracy"):
        Report.model_validate(raw)


def test_nan_is_written_as_null() -> None:
    report = read_report(COMMITTED[0])
    first = report.models[report.primary]
    assert first.calibration is not None
    first.calibration.ece["clean"] = float("nan")
    assert json.loads(report.to_json())["models"][report.primary]["calibration"]["ece"]["clean"] is None


def test_json_schema_names_the_report_fields() -> None:
    """What the gateway's OpenAPI document shows for the report endpoint."""
    schema = Report.model_json_schema(mode="serialization")
    assert schema["properties"]["format"]["const"] == FORMAT
    results = schema["$defs"]["ModelResults"]["properties"]
    assert {"clean", "accuracy", "core", "extras", "calibration", "ce"} <= set(results)


def test_report_model_imports_neither_torch_nor_matplotlib() -> None:
    """The gateway imports the report model; the ML stack must not come with it."""
    code = (
        "import sys\n"
        "import dyntta.evaluate.schema, dyntta.evaluate.report\n"
        "from dyntta.evaluate import Report, FORMAT\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'onnxruntime') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def test_package_face_is_lazy_but_complete() -> None:
    import dyntta.evaluate as evaluate

    for name in evaluate.__all__:
        assert getattr(evaluate, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        evaluate.nope  # noqa: B018
