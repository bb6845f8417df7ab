"""Report writers: versioned JSON (the machine-readable record) and Markdown (for people and docs/)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dyntta.evaluate.report import (
    ALEXNET_IMAGENET_C_CLEAN_ERROR,
    ALEXNET_IMAGENET_C_ERRORS,
    CORE_GROUPS,
    FORMAT,
    GROUP_OF,
)


def _clean_json(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null (e.g. ECE of an empty bin set)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    if report.get("format") != FORMAT:
        raise ValueError(f"not a robustness report of format {FORMAT}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean_json(report), indent=2) + "\n")
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    report = json.loads(Path(path).read_text())
    if report.get("format") != FORMAT:
        raise ValueError(f"{path}: format {report.get('format')!r}, expected {FORMAT!r}")
    return report


# --- Markdown -------------------------------------------------------------------------------------------


#: A reference that loses less accuracy than this under a corruption makes relative CE ill-conditioned.
ILL_CONDITIONED_DROP = 0.02


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: Sequence[Any], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    sep = align or "|" + "|".join("---" for _ in head) + "|"
    return [_row(head), sep, *(_row(r) for r in rows), ""]


def _model_line(info: Mapping[str, Any] | None) -> str:
    if not info:
        return "–"
    parts = [f"`{info.get('name')}`"]
    details = [d for d in (info.get("kind"), info.get("arch")) if d]
    if info.get("num_parameters"):
        details.append(f"{info['num_parameters'] / 1e6:.2f} M parameters")
    if details:
        parts.append(f"({', '.join(details)})")
    if info.get("sha256"):
        parts.append(f"weights sha256 `{info['sha256'][:16]}`")
    if info.get("path"):
        parts.append(f"from `{info['path']}`")
    return " ".join(parts)


def headline_rows(report: Mapping[str, Any]) -> list[list[str]]:
    """One row per compared model: clean (CI), corrupted mean, s5 mean, gap, mCE, relative mCE, extras."""
    rows = []
    for name, res in report["models"].items():
        clean = res["clean"]
        core, extras, ce = res.get("core") or {}, res.get("extras") or {}, res.get("ce") or {}
        rows.append(
            [
                name,
                f"{pct(clean['accuracy'], 2)} [{pct(clean['ci95'][0], 2)}, {pct(clean['ci95'][1], 2)}]",
                pct(core.get("mean"), 2),
                pct(core.get("severity5_mean"), 2),
                pct(core.get("gap"), 2),
                pct(ce.get("mce")),
                pct(ce.get("relative_mce")),
                pct(extras.get("mean"), 2),
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
    res: Mapping[str, Any], names: Sequence[str], severities: Sequence[int], block: str
) -> list[str]:
    """Per-corruption rows (accuracy per severity, mean, CE, relative CE) and a per-severity mean row."""
    ce = res.get("ce") or {}
    with_ce = block == "core" and bool(ce)
    head = ["group", "corruption", *[f"s{s}" for s in severities], "mean"]
    if with_ce:
        head += ["CE", "rel. CE"]
    rows = []
    summary = res.get(block) or {}
    for c in names:
        row = [
            GROUP_OF[c],
            c,
            *[pct(res["accuracy"][c][str(s)]) for s in severities],
            f"**{pct(summary['per_corruption'][c])}**",
        ]
        if with_ce:
            row += [pct(ce["per_corruption"].get(c)), pct(ce["relative_per_corruption"].get(c))]
        rows.append(row)
    mean_row = [
        "",
        "**mean**",
        *[f"**{pct(summary['per_severity'][str(s)])}**" for s in severities],
        f"**{pct(summary['mean'])}**",
    ]
    if with_ce:
        mean_row += [f"**{pct(ce.get('mce'))}**", f"**{pct(ce.get('relative_mce'))}**"]
    rows.append(mean_row)
    return _table(head, rows)


def render_markdown(
    report: Mapping[str, Any], figures: Mapping[str, str] | None = None, title: str | None = None
) -> str:
    """The report as Markdown; ``figures`` maps a caption to a (relative) image path."""
    header = report.get("header", {})
    cond = report["conditions"]
    core, extras, severities = cond["core"], cond["extras"], cond["severities"]
    models = report["models"]
    first = next(iter(models))
    lines: list[str] = [f"# {title or 'Robustness report'}", ""]

    data = header.get("data", {})
    corr = header.get("corruptions", {})
    protocol = header.get("protocol", {})
    run = header.get("run", {})
    ref = report.get("reference")
    facts = [
        ("Model", _model_line(header.get("model"))),
        *([("Enhancer", _model_line(header["enhancer"]))] if header.get("enhancer") else []),
        (
            "Data",
            f"{data.get('name')} / {data.get('split')}, N = {data.get('n')}, {data.get('image_size')} px, "
            f"{len(data.get('classes', []))} classes",
        ),
        (
            "Corruptions",
            f"{corr.get('implementation')} {corr.get('version')}, parameter table "
            f"`{corr.get('table')}`, seed {header.get('seed')}; {len(core)} ImageNet-C + "
            f"{len(extras)} extra corruptions x severities {', '.join(map(str, severities))}",
        ),
        (
            "Protocol",
            f"{protocol.get('corruption', '–')}; JPEG re-encode: "
            f"{'yes' if protocol.get('jpeg_reencode') else 'no'}; {protocol.get('quantisation', '')}",
        ),
        ("Test-time adaptation", header.get("tta", "none")),
        ("CE reference", f"{ref['name']}: {ref['source']}" if ref else "none (no CE / mCE)"),
        (
            "Report format",
            f"`{report['format']}`, dyntta {header.get('dyntta_version')}, {header.get('created')}",
        ),
        (
            "Run",
            f"{run.get('seconds')} s, {run.get('images_classified')} images classified on "
            f"{run.get('device')} (batch {run.get('batch_size')}, {run.get('torch_threads')} threads)",
        ),
    ]
    if header.get("command"):
        facts.append(("Command", f"`{header['command']}`"))
    lines += _table(["", ""], facts)

    lines += [
        "## Headline",
        "",
        "Accuracy in %; mCE and relative mCE in % of the reference's error (reference "
        "= 100). Corrupted and severity-5 means are over the evaluated ImageNet-C corruptions only.",
        "",
    ]
    head = [
        h.replace("15 x 5", f"{len(core)} x {len(severities)}").replace("4 x 5", f"{len(extras)} x {len(severities)}")
        for h in HEADLINE_HEAD
    ]
    lines += _table(head, headline_rows(report))
    if len(models) > 1:
        lines += ["All models above were evaluated on the very same corrupted images.", ""]

    for name, res in models.items():
        label = f" — {name}" if len(models) > 1 else ""
        if core:
            lines += [f"## Accuracy per corruption and severity (%){label}", ""]
            lines += accuracy_table_lines(res, core, severities, "core")
            groups = (res.get("core") or {}).get("per_group", {})
            lines += _table(
                [*groups, "overall", "severity 5", "worst corruption"],
                [
                    [
                        *[pct(v) for v in groups.values()],
                        pct(res["core"]["mean"]),
                        pct(res["core"]["severity5_mean"]),
                        f"{res['core']['worst_corruption']['name']} "
                        f"({pct(res['core']['worst_corruption']['accuracy'])})",
                    ]
                ],
            )
        if extras:
            lines += [f"### Extra corruptions, not part of the means or mCE (%){label}", ""]
            lines += accuracy_table_lines(res, extras, severities, "extras")

    if len(models) > 1:
        lines += [f"## Difference to `{first}` (percentage points, same images)", ""]
        others = [m for m in models if m != first]
        rows = []
        for c in [*core, *extras]:
            base = models[first]["accuracy"][c]
            rows.append(
                [
                    c,
                    *[
                        _signed(
                            sum(models[m]["accuracy"][c][str(s)] - base[str(s)] for s in severities) / len(severities)
                        )
                        for m in others
                    ],
                ]
            )
        rows.append(
            [
                "clean",
                *[_signed(models[m]["clean"]["accuracy"] - models[first]["clean"]["accuracy"]) for m in others],
            ]
        )
        lines += _table(["corruption (mean over severities)", *others], rows)

    calib = {m: r["calibration"]["ece"] for m, r in models.items() if r.get("calibration")}
    if calib:
        keys = list(next(iter(calib.values())))
        lines += ["## Calibration (ECE, %, 15 bins; corrupted columns pool the ImageNet-C corruptions)", ""]
        lines += _table(
            ["model", *[k if k == "clean" else f"s{k}" for k in keys]],
            [[m, *[pct(e.get(k)) for k in keys]] for m, e in calib.items()],
        )

    if ref and ref.get("results"):
        ref_res = ref["results"]
        lines += [
            f"## CE reference `{ref['name']}`",
            "",
            f"{_model_line(header.get('reference'))}; {ref['source']}. Clean accuracy "
            f"{pct(ref_res['clean']['accuracy'], 2)} %.",
            "",
        ]
        recipe = (header.get("reference") or {}).get("metadata", {}).get("dyntta.reference")
        if recipe:
            lines += [f"Reference recipe: `{recipe}`", ""]
        if core:
            lines += accuracy_table_lines(ref_res, core, severities, "core")
            clean = ref_res["clean"]["accuracy"]
            flat = [c for c in core if clean - ref_res["core"]["per_corruption"][c] < ILL_CONDITIONED_DROP]
            if flat:
                lines += [
                    f"The reference loses less than {pct(ILL_CONDITIONED_DROP, 0)} points (mean over severities) "
                    f"on {', '.join(flat)}: relative CE divides by that small loss, so it is ill-conditioned "
                    "there and dominates relative mCE; read CE for those corruptions.",
                    "",
                ]
    elif ref and ref.get("errors"):
        lines += [
            f"## CE reference: {ref['name']}",
            "",
            f"Top-1 error (%), clean {pct(ref.get('clean_error', ALEXNET_IMAGENET_C_CLEAN_ERROR), 2)}. "
            "These published numbers are a valid reference only for the true ImageNet-C data.",
            "",
        ]
        lines += _table(
            ["corruption", *[f"s{s}" for s in severities], "mean"],
            [
                [
                    c,
                    *[pct(ref["errors"][c][str(s)], 2) for s in severities],
                    pct(sum(ref["errors"][c][str(s)] for s in severities) / len(severities), 2),
                ]
                for c in core
                if c in ref["errors"]
            ],
        )

    if figures:
        lines += ["## Figures", ""]
        for caption, path in figures.items():
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    lines += [
        "## Notes",
        "",
        "- Groups: " + "; ".join(f"{g}: {', '.join(m)}" for g, m in CORE_GROUPS.items()) + ".",
        "- CE_c = sum_s E_model(c, s) / sum_s E_ref(c, s); relative CE_c subtracts S x the clean error "
        "from both sums (Hendrycks & Dietterich 2019). Published ImageNet-C mCE values (AlexNet = 100) are "
        "not comparable with a CE against another reference or on other data.",
        "- Relative CE is shown as – where the reference's corrupted error does not exceed its clean error "
        "(the ratio is undefined there); relative mCE averages the defined ones.",
        "- Severity is not monotone for every corruption in the reference parameter tables.",
        "",
    ]
    return "\n".join(lines)


def write_markdown(
    report: Mapping[str, Any],
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
