"""Write a finished run's files: report.json, report.md and the PNG figures (three, and for an enhancer
report the enhancer strip, one PNG per corruption group, and the two models' curves)."""

from __future__ import annotations

import os
from pathlib import Path

from dyntta.evaluate import plots
from dyntta.evaluate.runner import ReportRun
from dyntta.evaluate.writers import write_json, write_markdown

JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"
HEATMAP_FILE = "heatmap.png"
CURVES_FILE = "severity_curves.png"
SAMPLES_FILE = "samples.png"
ENHANCER_CURVES_FILE = "enhancer_curves.png"


def strip_file(group: str) -> str:
    return f"enhancer_strip_{group}.png"


def write_enhancer_figures(run: ReportRun, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw the enhancer strip (one PNG per group) and the two models' curves into ``out_dir`` and name the
    files in ``run.report.enhancer_strip``; nothing for a report without a strip. Returns {kind: path}."""
    strip, images = run.report.enhancer_strip, run.strip_images
    if strip is None or images is None:
        return {}
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for group in dict.fromkeys(row.group for row in strip.rows):
        rows = [row for row in strip.rows if row.group == group]
        title = f"{group}: test images {', '.join(map(str, strip.indices))} at severity {strip.severity}"
        paths[f"strip:{group}"] = plots.enhancer_strip(strip, images, rows, out / strip_file(group), title)
        for row in rows:
            row.file = strip_file(group)
    curves = out / ENHANCER_CURVES_FILE
    paths["enhancer_curves"] = plots.enhancer_curves(run.report, strip.alone, strip.enhanced, curves)
    strip.curves_file = ENHANCER_CURVES_FILE
    return paths


def write_outputs(
    run: ReportRun, out_dir: str | os.PathLike, *, title: str | None = None, figures: bool = True
) -> dict[str, Path]:
    """Write every output of ``run`` into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = run.report
    cond = report.conditions
    paths: dict[str, Path] = {}
    captions: dict[str, str] = {}
    if figures:
        paths.update(write_enhancer_figures(run, out))  # before the JSON: it names the files
        paths["heatmap"] = plots.heatmap(report, out / HEATMAP_FILE)
        paths["curves"] = plots.severity_curves(report, out / CURVES_FILE)
        captions["Accuracy (%) per corruption and severity"] = HEATMAP_FILE
        captions["Accuracy vs severity"] = CURVES_FILE
        if run.samples and run.sample_indices:
            index = run.sample_indices[0]
            label = int(run.predictions.labels[index])
            name = run.classes[label] if label < len(run.classes) else str(label)
            caption = f"test image {index} ({name})"
            paths["samples"] = plots.sample_grid(
                run.samples, out / SAMPLES_FILE, cond.corruptions, cond.severities, caption=caption
            )
            captions[f"Sample corruptions of {caption}"] = SAMPLES_FILE
    paths["json"] = write_json(report, out / JSON_FILE)
    paths["markdown"] = write_markdown(report, out / MARKDOWN_FILE, captions, title)
    return paths


__all__ = [
    "CURVES_FILE",
    "ENHANCER_CURVES_FILE",
    "HEATMAP_FILE",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "SAMPLES_FILE",
    "strip_file",
    "write_enhancer_figures",
    "write_outputs",
]
