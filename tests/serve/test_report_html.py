"""The report page the gateway serves, rendered from the typed report (no Triton needed)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from dyntta.evaluate.schema import read_report
from serve.report_html import render_report_html

ENHANCER_REPORT = Path(__file__).resolve().parents[2] / "docs" / "reports" / "fashion-mnist-enhancer" / "report.json"


def test_page_shows_summary_heatmaps_and_the_enhancer_difference() -> None:
    report = read_report(ENHANCER_REPORT)
    page = render_report_html(report, job_id="0" * 32)
    recognizer, enhanced = report.models["recognizer"], report.models["enhancer + recognizer"]
    assert page.startswith("<!doctype html>") and f"Robustness report {'0' * 32}" in page
    assert f"<th>recognizer</th><td>{100 * recognizer.clean.accuracy:.2f} [" in page
    assert recognizer.core is not None and f"<td>{100 * recognizer.core.mean:.2f}</td>" in page
    assert page.count('<table class="heatmap">') == 3  # one per model, and the difference
    fog5 = enhanced.at("fog", 5) - recognizer.at("fog", 5)
    assert "enhancer + recognizer minus recognizer (points)" in page and f">{100 * fog5:+.1f}<" in page
    assert "<script" not in page and not re.search(r'(src|href)="http', page)  # self-contained


def test_names_are_escaped() -> None:
    report = read_report(ENHANCER_REPORT)
    report.models = {"<b>x</b>": report.models["recognizer"]}
    page = render_report_html(report)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_enhancer_strip_is_embedded_and_described() -> None:
    """The committed enhancer report's strip PNGs and curves go into the page as data URIs (the gateway's
    CSP allows ``img-src data:``); the alt text and the caption carry the predictions as words."""
    report = read_report(ENHANCER_REPORT)
    strip = report.enhancer_strip
    assert strip is not None and strip.curves_file is not None
    page = render_report_html(report, assets=ENHANCER_REPORT.parent)
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    files = [strip.curves_file, *strip.files()]
    assert len(uris) == len(files) == 1 + 5  # the curves, and one strip per group (4 + the extras)
    assert [base64.b64decode(u) for u in uris] == [(ENHANCER_REPORT.parent / f).read_bytes() for f in files]
    first = strip.rows[0].samples[0]
    said = strip.classes[first.predicted[strip.alone]]
    assert f"{strip.rows[0].corruption}, image {first.index} (" in page and said in page
    assert "The enhancer at work" in page and f"at severity {strip.severity}" in page
    # without the files, the same predictions as a table
    bare = render_report_html(report)
    assert "data:image/png" not in bare and bare.count('<tr><th class="name">') > len(strip.rows)
    assert bare.count('class="right"') + bare.count('class="wrong"') == 2 * len(strip.rows) * len(strip.indices)
