"""Report figures (PNG, matplotlib Agg): accuracy heatmap, accuracy-vs-severity curves, sample grid, and
for enhancer reports the enhancer strip (one PNG per group) and the two models' curves per group.

Figures are drawn at a modest DPI with few colours so the committed PNGs stay small (tens of kB).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers, CI or the gateway's job workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dyntta.contract import BENCHMARK_GROUPS, CORRUPTION_GROUPS, EXTRA_CORRUPTIONS  # noqa: E402
from dyntta.evaluate.report import CLEAN, Condition  # noqa: E402
from dyntta.evaluate.schema import EnhancerStrip, Report, StripRow  # noqa: E402

if TYPE_CHECKING:
    import torch

    from dyntta.evaluate.strip import StripImages

DPI = 90


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Save as a 256-colour palette PNG: a third of the size of RGBA, no visible change for these plots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def heatmap(report: Report, path: str | os.PathLike) -> Path:
    """Accuracy (%) per corruption (rows) and severity (columns), one panel per compared model."""
    models = report.models
    names = report.conditions.corruptions
    severities = report.conditions.severities
    columns = ["clean", *[f"s{s}" for s in severities]]
    fig, axes = plt.subplots(
        1,
        len(models),
        figsize=(1.0 + 0.55 * len(columns) * len(models) + 1.6 * len(models), 0.6 + 0.28 * len(names)),
        squeeze=False,
    )
    image = None
    for ax, (model, res) in zip(axes[0], models.items(), strict=True):
        values = np.array([[res.clean.accuracy, *[res.at(c, s) for s in severities]] for c in names]) * 100
        image = ax.imshow(values, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
        ax.set_xticks(range(len(columns)), columns, fontsize=8)
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        n_core = sum(c not in EXTRA_CORRUPTIONS for c in names)
        if 0 < n_core < len(names):
            ax.axhline(n_core - 0.5, color="white", linewidth=2)  # the extras are apart
        ax.set_title(model, fontsize=9)
    assert image is not None  # one panel per model, and a report has at least one model
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.04, pad=0.02, label="accuracy (%)")
    return _save(fig, path)


def severity_curves(report: Report, path: str | os.PathLike) -> Path:
    """Accuracy vs severity (0 = clean), one panel per group; compared models share colours per
    corruption and differ in line style (first model solid)."""
    models = report.models
    names = report.conditions.corruptions
    severities = report.conditions.severities
    groups = {g: [c for c in m if c in names] for g, m in BENCHMARK_GROUPS.items()}
    groups["extra"] = [c for c in EXTRA_CORRUPTIONS if c in names]
    groups = {g: m for g, m in groups.items() if m}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(groups), figsize=(2.7 * len(groups), 2.8), sharey=True, squeeze=False)
    xs = [0, *severities]
    for ax, (group, members) in zip(axes[0], groups.items(), strict=True):
        for k, res in enumerate(models.values()):
            for i, c in enumerate(members):
                ys = [100 * res.clean.accuracy, *[100 * res.at(c, s) for s in severities]]
                ax.plot(
                    xs,
                    ys,
                    styles[k % len(styles)],
                    color=f"C{i}",
                    marker="o",
                    markersize=2.5,
                    linewidth=1.2,
                    label=c if k == 0 else None,
                )
        ax.set_title(group, fontsize=9)
        ax.set_xticks(xs, ["clean", *map(str, severities)], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    axes[0][0].set_ylabel("accuracy (%)", fontsize=8)
    if len(models) > 1:
        fig.suptitle("  ".join(f"{styles[k % len(styles)]} {m}" for k, m in enumerate(models)), fontsize=8)
    return _save(fig, path)


def sample_grid(
    samples: Mapping[Condition, torch.Tensor],
    path: str | os.PathLike,
    corruptions: Sequence[str],
    severities: Sequence[int],
    which: int = 0,
    caption: str | None = None,
) -> Path:
    """One image (``which``-th kept sample) clean and under every corruption x severity, at pixel scale."""
    columns = ["clean", *[f"s{s}" for s in severities]]
    cell, label_w, title_h = 0.62, 1.25, 0.45 if caption else 0.25  # inches; square cells, no dead space
    width, height = label_w + cell * len(columns), title_h + cell * len(corruptions)
    fig, axes = plt.subplots(
        len(corruptions),
        len(columns),
        figsize=(width, height),
        squeeze=False,
        gridspec_kw={
            "left": label_w / width,
            "right": 1.0,
            "top": 1 - title_h / height,
            "bottom": 0.0,
            "wspace": 0.06,
            "hspace": 0.06,
        },
    )
    for i, c in enumerate(corruptions):
        for j, condition in enumerate([CLEAN, *[(c, s) for s in severities]]):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if condition in samples:
                ax.imshow(samples[condition][which].permute(1, 2, 0).numpy(), interpolation="nearest")
            if i == 0:
                ax.set_title(columns[j], fontsize=8, pad=2)
            if j == 0:
                ax.set_ylabel(c, fontsize=7, rotation=0, ha="right", va="center")
    if caption:
        fig.suptitle(caption, fontsize=8, y=1 - 0.08 / height, va="top")
    return _save(fig, path)


RIGHT, WRONG = "#1a7f37", "#cf222e"  # GitHub's green and red: readable on white, told apart by the marks too


def _class_name(classes: Sequence[str], k: int, width: int = 13) -> str:
    name = classes[k] if 0 <= k < len(classes) else str(k)
    return name if len(name) <= width else name[: width - 1] + "…"


def _verdict(classes: Sequence[str], predicted: int, label: int) -> tuple[str, str]:
    """A prediction's text and colour: '✓ name' in green when right, '✗ name' in red when wrong."""
    right = predicted == label
    return f"{'✓' if right else '✗'} {_class_name(classes, predicted)}", RIGHT if right else WRONG


def enhancer_strip(
    strip: EnhancerStrip, images: StripImages, rows: Sequence[StripRow], path: str | os.PathLike, title: str
) -> Path:
    """The strip of the corruptions of ``rows`` (:func:`strip_figure`) as a PNG."""
    return _save(strip_figure(strip, images, rows, title), path)


def strip_figure(strip: EnhancerStrip, images: StripImages, rows: Sequence[StripRow], title: str) -> plt.Figure:
    """clean | corrupted | enhanced for each strip image (side by side) and each corruption of ``rows``
    (one row each); under the clean image its class, under the others the two models' predictions."""
    k = len(strip.indices)
    cell, gap, label_w, head_h, foot_h = 0.78, 0.22, 1.2, 0.6, 0.2  # inches
    width = label_w + k * 3 * cell + (k - 1) * gap
    row_h = cell + 0.2  # room for the prediction under each image
    height = head_h + row_h * len(rows) + foot_h
    ratios = [r for j in range(k) for r in ([1, 1, 1] + ([gap / cell] if j < k - 1 else []))]
    fig, axes = plt.subplots(
        len(rows),
        len(ratios),
        figsize=(width, height),
        squeeze=False,
        gridspec_kw={
            "width_ratios": ratios,
            "left": label_w / width,
            "right": 1.0,
            "top": 1 - head_h / height,
            "bottom": foot_h / height,
            "wspace": 0.08,
            "hspace": 0.2 / cell + 0.05,
        },
    )
    for i, row in enumerate(rows):
        tiles = (images.clean, images.corrupted[row.corruption], images.enhanced[row.corruption])
        for j, sample in enumerate(row.samples):
            texts = [
                (_class_name(strip.classes, sample.label), "black"),
                _verdict(strip.classes, sample.predicted[strip.alone], sample.label),
                _verdict(strip.classes, sample.predicted[strip.enhanced], sample.label),
            ]
            for t, (pixels, (text, colour)) in enumerate(zip(tiles, texts, strict=True)):
                ax = axes[i][4 * j + t]
                ax.imshow(pixels[j].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_xlabel(text, fontsize=6.5, color=colour, labelpad=1.5)
                if i == 0:
                    heading = ("clean", f"corrupted s{strip.severity}", "enhanced")[t]
                    ax.set_title(heading, fontsize=7, pad=2)
        axes[i][0].set_ylabel(row.corruption, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
        for j in range(k - 1):
            axes[i][4 * j + 3].axis("off")
    fig.suptitle(
        f"{title}\nunder corrupted: {strip.alone}; under enhanced: {strip.enhanced} (✓ right, ✗ wrong)",
        fontsize=7.5,
        y=1 - 0.06 / height,
        va="top",
    )
    return fig


def enhancer_curves(report: Report, alone: str, enhanced: str, path: str | os.PathLike) -> Path:
    """Accuracy vs severity (0 = clean), one panel per group: the group mean of ``alone`` and of ``enhanced``
    (bold), each corruption of the group faint behind them."""
    names = report.conditions.corruptions
    severities = report.conditions.severities
    groups = {g: [c for c in m if c in names] for g, m in CORRUPTION_GROUPS.items()}
    groups = {g: m for g, m in groups.items() if m}
    xs = [0, *severities]
    fig, axes = plt.subplots(1, len(groups), figsize=(2.3 * len(groups), 2.5), sharey=True, squeeze=False)
    for ax, (group, members) in zip(axes[0], groups.items(), strict=True):
        for colour, model in (("C0", alone), ("C1", enhanced)):
            res = report.models[model]
            for c in members:
                ys = [100 * res.clean.accuracy, *[100 * res.at(c, s) for s in severities]]
                ax.plot(xs, ys, "-", color=colour, linewidth=0.6, alpha=0.3)
            means = [100 * res.clean.accuracy, *[100 * np.mean([res.at(c, s) for c in members]) for s in severities]]
            ax.plot(xs, means, "-", color=colour, marker="o", markersize=3, linewidth=2, label=model)
        ax.set_title(f"{group} ({len(members)})", fontsize=9)
        ax.set_xticks(xs, ["clean", *map(str, severities)], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("group mean (bold) and each corruption (faint) vs severity", fontsize=8, y=1.04)
    return _save(fig, path)


__all__ = ["enhancer_curves", "enhancer_strip", "heatmap", "sample_grid", "severity_curves", "strip_figure"]
