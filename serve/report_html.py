"""A robustness report (dyntta.evaluate's JSON format) as one self-contained HTML page.

The page holds a summary table; for a report with an enhancer strip, the enhancer at work (both models'
curves per group and clean | corrupted | enhanced images with both predictions, the PNGs embedded as data
URIs, which the gateway's ``img-src 'self' data:`` policy allows); per compared model an accuracy heatmap
(corruption x severity, cells coloured by accuracy), plus the difference "enhancer + recognizer minus
recognizer" when both are present. No scripts and no external assets, so a saved page keeps working.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dyntta.evaluate.schema import EnhancerStrip, ModelResults, Report


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.{digits}f}"


def _cell_colour(accuracy: float | None) -> str:
    """Red (0 %) through yellow to green (100 %)."""
    if accuracy is None or math.isnan(accuracy):
        return "#eee"
    hue = 120 * max(0.0, min(1.0, accuracy))
    return f"hsl({hue:.0f}, 70%, {72 - 10 * accuracy:.0f}%)"


def _delta_colour(delta: float | None) -> str:
    if delta is None or math.isnan(delta):
        return "#eee"
    strength = min(abs(delta) / 0.2, 1.0)  # full colour at 20 points
    hue = 120 if delta >= 0 else 0
    return f"hsl({hue}, 65%, {95 - 35 * strength:.0f}%)"


def _heatmap(res: ModelResults, names: list[str], severities: list[int]) -> str:
    head = "".join(f"<th>s{s}</th>" for s in severities)
    rows = []
    clean = res.clean.accuracy
    rows.append(
        f'<tr><th class="name">clean</th><td style="background:{_cell_colour(clean)}" '
        f'colspan="{len(severities)}">{_pct(clean)}</td><td>{_pct(clean)}</td></tr>'
    )
    per_corruption = res.block_means()
    for name in names:
        cells = []
        for s in severities:
            value = res.accuracy.get(name, {}).get(s)
            cells.append(f'<td style="background:{_cell_colour(value)}">{_pct(value)}</td>')
        mean = per_corruption.get(name)
        rows.append(
            f'<tr><th class="name">{html.escape(name)}</th>{"".join(cells)}'
            f'<td style="background:{_cell_colour(mean)}"><b>{_pct(mean)}</b></td></tr>'
        )
    return (
        f'<table class="heatmap"><thead><tr><th>corruption</th>{head}<th>mean</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _delta_heatmap(new: ModelResults, base: ModelResults, names: list[str], severities: list[int]) -> str:
    head = "".join(f"<th>s{s}</th>" for s in severities)
    rows = []
    for name in names:
        cells = []
        for s in severities:
            a, b = new.accuracy.get(name, {}).get(s), base.accuracy.get(name, {}).get(s)
            delta = None if a is None or b is None else a - b
            text = "–" if delta is None else f"{100 * delta:+.1f}"
            cells.append(f'<td style="background:{_delta_colour(delta)}">{text}</td>')
        rows.append(f'<tr><th class="name">{html.escape(name)}</th>{"".join(cells)}</tr>')
    return (
        f'<table class="heatmap"><thead><tr><th>corruption</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _summary(models: Mapping[str, ModelResults]) -> str:
    rows = []
    for name, res in models.items():
        clean, core, extras = res.clean, res.core, res.extras
        rows.append(
            f"<tr><th>{html.escape(name)}</th><td>{_pct(clean.accuracy, 2)} "
            f"[{_pct(clean.ci95[0], 2)}, {_pct(clean.ci95[1], 2)}]</td><td>{_pct(core.mean if core else None, 2)}</td>"
            f"<td>{_pct(core.severity5_mean if core else None, 2)}</td>"
            f"<td>{_pct(extras.mean if extras else None, 2)}</td></tr>"
        )
    return (
        '<table class="summary"><thead><tr><th>model</th><th>clean accuracy % [95 % CI]</th>'
        "<th>corrupted mean % (ImageNet-C set)</th><th>severity-5 mean %</th><th>extras mean %</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _code_spans(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def _png_uri(path: Path) -> str | None:
    """A PNG file as a data URI; None if it is missing or not a PNG (the page then shows the table)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode() if data[:4] == b"\x89PNG" else None


def _said(strip: EnhancerStrip, predicted: int, label: int) -> str:
    name = strip.classes[predicted] if 0 <= predicted < len(strip.classes) else str(predicted)
    return f"{'✓' if predicted == label else '✗'} {name}"


def _strip_alt(strip: EnhancerStrip, group: str) -> str:
    """The group's strip as words: every image's class and both predictions (the PNG's text, readable)."""
    parts = []
    for row in strip.rows:
        if row.group == group:
            for sample in row.samples:
                label = strip.classes[sample.label] if sample.label < len(strip.classes) else str(sample.label)
                parts.append(
                    f"{row.corruption}, image {sample.index} ({label}): {strip.alone} "
                    f"{_said(strip, sample.predicted[strip.alone], sample.label)}, {strip.enhanced} "
                    f"{_said(strip, sample.predicted[strip.enhanced], sample.label)}"
                )
    return "; ".join(parts)


def _strip_table(strip: EnhancerStrip) -> str:
    """The strip without its pictures: class, then both predictions, coloured right / wrong."""

    def cell(predicted: int, label: int) -> str:
        kind = "right" if predicted == label else "wrong"
        return f'<span class="{kind}">{html.escape(_said(strip, predicted, label))}</span>'

    head = "".join(f"<th>image {i}</th>" for i in strip.indices)
    rows = []
    for row in strip.rows:
        cells = "".join(
            f"<td>{html.escape(strip.classes[s.label] if s.label < len(strip.classes) else str(s.label))}: "
            f"{cell(s.predicted[strip.alone], s.label)} → {cell(s.predicted[strip.enhanced], s.label)}</td>"
            for s in row.samples
        )
        rows.append(f'<tr><th class="name">{html.escape(row.corruption)}</th>{cells}</tr>')
    return (
        f'<table class="strip"><thead><tr><th>corruption</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _enhancer_strip(strip: EnhancerStrip, assets: Path | None) -> str:
    """Both models' curves, then the strip per group as embedded PNGs (or as a table without them)."""
    parts = ["<h2>The enhancer at work</h2>"]
    curves = _png_uri(assets / strip.curves_file) if assets is not None and strip.curves_file else None
    if curves:
        alt = f"accuracy vs severity per group, {strip.alone} and {strip.enhanced}"
        parts.append(f'<figure><img src="{curves}" alt="{html.escape(alt)}"></figure>')
    parts.append(f"<p>{_code_spans(strip.caption())}</p>")
    uris = {file: _png_uri(assets / file) if assets is not None else None for file in strip.files()}
    if uris and all(uris.values()):
        for file, uri in uris.items():
            group = next(row.group for row in strip.rows if row.file == file)
            parts.append(
                f'<figure class="strip"><figcaption>{html.escape(group)}</figcaption>'
                f'<img src="{uri}" alt="{html.escape(_strip_alt(strip, group))}"></figure>'
            )
    else:  # drawn without figures, or the files are gone: the predictions as a table
        parts.append(_strip_table(strip))
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td { font-variant-numeric: tabular-nums; }
th.name, .summary th { text-align: left; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 2em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 85%; }
figure { margin: 0.5em 0 1.5em; }
figure img { max-width: 100%; height: auto; }
figcaption { font-weight: bold; margin-bottom: 0.3em; }
.strip td { text-align: left; }
.right { color: #1a7f37; }
.wrong { color: #cf222e; }
"""


def render_report_html(report: Report, *, job_id: str | None = None, assets: Path | None = None) -> str:
    """The page; ``assets``: the folder holding the PNGs the report names (the enhancer strip's), embedded."""
    header = report.header
    names = list(report.conditions.corruptions)
    severities = list(report.conditions.severities)
    models = report.models
    data = header.data
    corruptions = header.corruptions.model_dump(mode="json") if header.corruptions else {}
    title = f"Robustness report {job_id}" if job_id else "Robustness report"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(data.name if data else '?'))} ({data.n if data else '?'} images, "
        f"{data.image_size if data else '?'} px); seed {header.seed if header.seed is not None else '?'}; "
        f"corruptions: {html.escape(json.dumps(corruptions))}</p>",
        "<h2>Summary</h2>",
        _summary(models),
        *([_enhancer_strip(report.enhancer_strip, assets)] if report.enhancer_strip else []),
        "<h2>Accuracy (%) per corruption and severity</h2>",
        '<div class="heatmaps">',
    ]
    for name, res in models.items():
        sections.append(f"<div><h3>{html.escape(name)}</h3>{_heatmap(res, names, severities)}</div>")
    sections.append("</div>")
    if "recognizer" in models and len(models) > 1:
        for name, res in models.items():
            if name != "recognizer":
                sections.append(
                    f"<h2>{html.escape(name)} minus recognizer (points)</h2>"
                    + _delta_heatmap(res, models["recognizer"], names, severities)
                )
    dumped = html.escape(json.dumps(header.model_dump(mode="json"), indent=2, default=str))
    sections.append(f"<h2>Header</h2><pre>{dumped}</pre>")
    body = "\n".join(sections)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )
