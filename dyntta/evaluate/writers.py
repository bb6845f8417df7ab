"""Report writers: versioned JSON (the machine-readable record) and Markdown (for people and docs/).

The Markdown is one function per section, each reading the typed :class:`~dyntta.evaluate.schema.Report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dyntta.contract import BENCHMARK_GROUPS, GROUP_OF
from dyntta.evaluate.report import ALEXNET_IMAGENET_C_CLEAN_ERROR, ALEXNET_IMAGENET_C_ERRORS
from dyntta.evaluate.schema import (
    BlockSummary,
    EnhancerStrip,
    ModelDescription,
    ModelResults,
    ReferenceBlock,
    Report,
    read_report,
    write_report,
)


def write_json(report: Report, path: str | os.PathLike[str]) -> Path:
    return write_report(report, path)


def read_json(path: str | os.PathLike[str]) -> Report:
    return read_report(path)


# --- Markdown -------------------------------------------------------------------------------------------


#: A reference that loses less accuracy than this under a corruption makes relative CE ill-conditioned.
ILL_CONDITIONED_DROP = 0.02


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [_row(head), "|" + "|".join("---" for _ in head) + "|", *(_row(r) for r in rows), ""]


def _model_line(info: ModelDescription | None) -> str:
    if info is None:
        return "–"
    parts = [f"`{info.name}`"]
    details = [d for d in (info.kind, info.arch) if d]
    if info.num_parameters:
        details.append(f"{info.num_parameters / 1e6:.2f} M parameters")
    if details:
        parts.append(f"({', '.join(details)})")
    if info.sha256:
        parts.append(f"weights sha256 `{info.sha256[:16]}`")
    if info.path:
        parts.append(f"from `{info.path}`")
    return " ".join(parts)


def headline_rows(report: Report) -> list[list[str]]:
    """One row per compared model: clean (CI), corrupted mean, s5 mean, gap, mCE, relative mCE, extras."""
    rows = []
    for name, res in report.models.items():
        clean, core, extras, ce = res.clean, res.core, res.extras, res.ce
        rows.append(
            [
                name,
                f"{pct(clean.accuracy, 2)} [{pct(clean.ci95[0], 2)}, {pct(clean.ci95[1], 2)}]",
                pct(core.mean if core else None, 2),
                pct(core.severity5_mean if core else None, 2),
                pct(core.gap if core else None, 2),
                pct(ce.mce if ce else None),
                pct(ce.relative_mce if ce else None),
                pct(extras.mean if extras else None, 2),
            ]
        )
    return rows


HEADLINE_HEAD = [
    "model",
    "clean accuracy [95 % CI]",
    "corrupted mean (15 x 5)",
    "severity-5 mean",
    "clean - corrupted",
    "mCE",
    "relative mCE",
    "extras mean (4 x 5)",
]


def accuracy_table_lines(
    res: ModelResults, names: Sequence[str], severities: Sequence[int], block: Literal["core", "extras"]
) -> list[str]:
    """Per-corruption rows (accuracy per severity, mean, CE, relative CE) and a per-severity mean row."""
    ce = res.ce if block == "core" else None
    summary = res.core if block == "core" else res.extras
    head = ["group", "corruption", *[f"s{s}" for s in severities], "mean"]
    if ce:
        head += ["CE", "rel. CE"]
    rows = []
    for c in names:
        row = [
            GROUP_OF[c],
            c,
            *[pct(res.at(c, s)) for s in severities],
            f"**{pct(summary.per_corruption[c] if summary else None)}**",
        ]
        if ce:
            row += [pct(ce.per_corruption.get(c)), pct(ce.relative_per_corruption.get(c))]
        rows.append(row)
    mean_row = [
        "",
        "**mean**",
        *[f"**{pct(summary.per_severity[s] if summary else None)}**" for s in severities],
        f"**{pct(summary.mean if summary else None)}**",
    ]
    if ce:
        mean_row += [f"**{pct(ce.mce)}**", f"**{pct(ce.relative_mce)}**"]
    rows.append(mean_row)
    return _table(head, rows)


def _facts(report: Report) -> list[str]:
    """The table of what was evaluated, how and by what."""
    header, cond, ref = report.header, report.conditions, report.reference
    data, corr, protocol, run = header.data, header.corruptions, header.protocol, header.run
    facts = [("Model", _model_line(header.model))]
    if header.enhancer:
        facts.append(("Enhancer", _model_line(header.enhancer)))
    if data is not None:
        facts.append(
            (
                "Data",
                f"{data.name} / {data.split}, N = {data.n}, {data.image_size} px, {len(data.classes)} classes",
            )
        )
    sizes = f"{len(cond.core)} ImageNet-C + {len(cond.extras)} extra corruptions x severities " + ", ".join(
        map(str, cond.severities)
    )
    if corr is not None:
        facts.append(
            (
                "Corruptions",
                f"{corr.implementation} {corr.version}, parameter table `{corr.table}`, seed {header.seed}; {sizes}",
            )
        )
    else:
        facts.append(("Corruptions", sizes))
    if protocol is not None:
        facts.append(
            (
                "Protocol",
                f"{protocol.corruption}; JPEG re-encode: {'yes' if protocol.jpeg_reencode else 'no'}; "
                f"{protocol.quantisation}",
            )
        )
    facts += [
        ("Test-time adaptation", header.tta or "none"),
        ("CE reference", f"{ref.name}: {ref.source}" if ref else "none (no CE / mCE)"),
        ("Report format", f"`{report.format}`, dyntta {header.dyntta_version}, {header.created}"),
    ]
    if run is not None:
        facts.append(
            (
                "Run",
                f"{run.seconds} s, {run.images_classified} images classified on {run.device} "
                f"(batch {run.batch_size}, {run.torch_threads} threads)",
            )
        )
    if header.command:
        facts.append(("Command", f"`{header.command}`"))
    return _table(["", ""], facts)


def _headline(report: Report) -> list[str]:
    cond = report.conditions
    shape = len(cond.severities)
    head = [
        h.replace("15 x 5", f"{len(cond.core)} x {shape}").replace("4 x 5", f"{len(cond.extras)} x {shape}")
        for h in HEADLINE_HEAD
    ]
    lines = [
        "## Headline",
        "",
        "Accuracy in %; mCE and relative mCE in % of the reference's error (reference "
        "= 100). Corrupted and severity-5 means are over the evaluated ImageNet-C corruptions only.",
        "",
        *_table(head, headline_rows(report)),
    ]
    if len(report.models) > 1:
        lines += ["All models above were evaluated on the very same corrupted images.", ""]
    return lines


def _group_summary(core: BlockSummary) -> list[str]:
    groups = core.per_group or {}
    worst = core.worst_corruption
    return _table(
        [*groups, "overall", "severity 5", "worst corruption"],
        [
            [
                *[pct(v) for v in groups.values()],
                pct(core.mean),
                pct(core.severity5_mean),
                f"{worst.name} ({pct(worst.accuracy)})",
            ]
        ],
    )


def _model_sections(report: Report) -> list[str]:
    """Per compared model: the accuracy table of the ImageNet-C corruptions, group means, the extras."""
    cond = report.conditions
    lines: list[str] = []
    for name, res in report.models.items():
        label = f" — {name}" if len(report.models) > 1 else ""
        if cond.core:
            lines += [f"## Accuracy per corruption and severity (%){label}", ""]
            lines += accuracy_table_lines(res, cond.core, cond.severities, "core")
            if res.core is not None:
                lines += _group_summary(res.core)
        if cond.extras:
            lines += [f"### Extra corruptions, not part of the means or mCE (%){label}", ""]
            lines += accuracy_table_lines(res, cond.extras, cond.severities, "extras")
    return lines


def _differences(report: Report) -> list[str]:
    """Every other model minus the first, mean over severities, in points (all saw the same images)."""
    if len(report.models) < 2:
        return []
    first = report.primary
    base = report.models[first]
    others = {m: r for m, r in report.models.items() if m != first}
    severities = report.conditions.severities
    rows = [
        [
            c,
            *[_signed(sum(r.at(c, s) - base.at(c, s) for s in severities) / len(severities)) for r in others.values()],
        ]
        for c in [*report.conditions.core, *report.conditions.extras]
    ]
    rows.append(["clean", *[_signed(r.clean.accuracy - base.clean.accuracy) for r in others.values()]])
    return [
        f"## Difference to `{first}` (percentage points, same images)",
        "",
        *_table(["corruption (mean over severities)", *others], rows),
    ]


def _calibration(report: Report) -> list[str]:
    calib = {m: r.calibration.ece for m, r in report.models.items() if r.calibration}
    if not calib:
        return []
    keys = list(next(iter(calib.values())))
    return [
        "## Calibration (ECE, %, 15 bins; corrupted columns pool the ImageNet-C corruptions)",
        "",
        *_table(
            ["model", *[k if k == "clean" else f"s{k}" for k in keys]],
            [[m, *[pct(e.get(k)) for k in keys]] for m, e in calib.items()],
        ),
    ]


def _reference_model(report: Report, ref: ReferenceBlock, results: ModelResults) -> list[str]:
    """A reference model of this run: its accuracies, and where relative CE is ill-conditioned."""
    described = report.header.reference
    core, severities = report.conditions.core, report.conditions.severities
    lines = [
        f"## CE reference `{ref.name}`",
        "",
        f"{_model_line(described)}; {ref.source}. Clean accuracy {pct(results.clean.accuracy, 2)} %.",
        "",
    ]
    recipe = ((described.metadata if described else None) or {}).get("dyntta.reference")
    if recipe:
        lines += [f"Reference recipe: `{recipe}`", ""]
    if core and results.core is not None:
        lines += accuracy_table_lines(results, core, severities, "core")
        clean = results.clean.accuracy
        flat = [c for c in core if clean - results.core.per_corruption[c] < ILL_CONDITIONED_DROP]
        if flat:
            lines += [
                f"The reference loses less than {pct(ILL_CONDITIONED_DROP, 0)} points (mean over severities) "
                f"on {', '.join(flat)}: relative CE divides by that small loss, so it is ill-conditioned "
                "there and dominates relative mCE; read CE for those corruptions.",
                "",
            ]
    return lines


def _reference_errors(report: Report, ref: ReferenceBlock, errors: Mapping[str, Mapping[int, float]]) -> list[str]:
    """Fixed published errors (AlexNet on ImageNet-C)."""
    severities = report.conditions.severities
    clean_error = ref.clean_error if ref.clean_error is not None else ALEXNET_IMAGENET_C_CLEAN_ERROR
    return [
        f"## CE reference: {ref.name}",
        "",
        f"Top-1 error (%), clean {pct(clean_error, 2)}. "
        "These published numbers are a valid reference only for the true ImageNet-C data.",
        "",
        *_table(
            ["corruption", *[f"s{s}" for s in severities], "mean"],
            [
                [
                    c,
                    *[pct(errors[c][s], 2) for s in severities],
                    pct(sum(errors[c][s] for s in severities) / len(severities), 2),
                ]
                for c in report.conditions.core
                if c in errors
            ],
        ),
    ]


def _reference(report: Report) -> list[str]:
    ref = report.reference
    if ref is None:
        return []
    if ref.results is not None:
        return _reference_model(report, ref, ref.results)
    if ref.errors:
        return _reference_errors(report, ref, ref.errors)
    return []


def _strip_table(strip: EnhancerStrip) -> list[str]:
    """The strip as text (a report written without figures)."""

    def name(k: int) -> str:
        return strip.classes[k] if 0 <= k < len(strip.classes) else str(k)

    def said(k: int, label: int) -> str:
        return f"{'✓' if k == label else '✗'} {name(k)}"

    rows = [
        [
            row.corruption,
            *[
                f"{name(s.label)}: {said(s.predicted[strip.alone], s.label)} → "
                f"{said(s.predicted[strip.enhanced], s.label)}"
                for s in row.samples
            ],
        ]
        for row in strip.rows
    ]
    return _table(["corruption", *[f"image {i}" for i in strip.indices]], rows)


def _enhancer_strip(report: Report) -> list[str]:
    """The enhancer at work: both models' curves per group, then clean | corrupted | enhanced images."""
    strip = report.enhancer_strip
    if strip is None:
        return []
    lines = ["## The enhancer at work", ""]
    if strip.curves_file:
        lines += [
            f"Accuracy (%) vs severity per group: `{strip.alone}` and `{strip.enhanced}`, group mean bold, "
            "each corruption faint.",
            "",
            f"![accuracy vs severity, {strip.alone} and {strip.enhanced}]({strip.curves_file})",
            "",
        ]
    lines += [strip.caption(), ""]
    files = strip.files()
    if not files:
        return lines + _strip_table(strip)
    for file in files:
        group = next(row.group for row in strip.rows if row.file == file)
        lines += [f"**{group}**", "", f"![enhancer strip, {group}]({file})", ""]
    return lines


def _figures(figures: Mapping[str, str] | None) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for caption, path in figures.items():
        lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    return lines


def _notes() -> list[str]:
    return [
        "## Notes",
        "",
        "- Groups: " + "; ".join(f"{g}: {', '.join(m)}" for g, m in BENCHMARK_GROUPS.items()) + ".",
        "- CE_c = sum_s E_model(c, s) / sum_s E_ref(c, s); relative CE_c subtracts S x the clean error "
        "from both sums (Hendrycks & Dietterich 2019). Published ImageNet-C mCE values (AlexNet = 100) are "
        "not comparable with a CE against another reference or on other data.",
        "- Relative CE is shown as – where the reference's corrupted error does not exceed its clean error "
        "(the ratio is undefined there); relative mCE averages the defined ones.",
        "- Severity is not monotone for every corruption in the reference parameter tables.",
        "",
    ]


def render_markdown(report: Report, figures: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """The report as Markdown; ``figures`` maps a caption to a (relative) image path."""
    lines = [
        f"# {title or 'Robustness report'}",
        "",
        *_facts(report),
        *_headline(report),
        *_enhancer_strip(report),
        *_model_sections(report),
        *_differences(report),
        *_calibration(report),
        *_reference(report),
        *_figures(figures),
        *_notes(),
    ]
    return "\n".join(lines)


def write_markdown(
    report: Report,
    path: str | os.PathLike,
    figures: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report, figures, title))
    return path


__all__ = [
    "ALEXNET_IMAGENET_C_ERRORS",
    "HEADLINE_HEAD",
    "headline_rows",
    "pct",
    "read_json",
    "render_markdown",
    "write_json",
    "write_markdown",
]
