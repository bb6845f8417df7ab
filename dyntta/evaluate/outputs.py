"""Write a finished run's files: report.json, report.md and the three PNG figures."""

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


def write_outputs(
    run: ReportRun, out_dir: str | os.PathLike, *, title: str | None = None, figures: bool = True
) -> dict[str, Path]:
    """Write every output of ``run`` into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = run.report
    cond = report.conditions
    paths: dict[str, Path] = {"json": write_json(report, out / JSON_FILE)}
    captions: dict[str, str] = {}
    if figures:
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
    paths["markdown"] = write_markdown(report, out / MARKDOWN_FILE, captions, title)
    return paths


__all__ = ["CURVES_FILE", "HEATMAP_FILE", "JSON_FILE", "MARKDOWN_FILE", "SAMPLES_FILE", "write_outputs"]
