"""Leave one novel family out: does training on some novel shifts help on a family the enhancer never saw?
(issue 13 section 3)

The novel shifts of :mod:`dyntta.shifts` come in three families (geometric, occlusion, appearance). For each
family F an enhancer is fitted on the 15 benchmark corruptions plus the other two families
(``--train-shifts``) and evaluated on F's shifts (the held-out figure). References, all fitted with the same
budget (``--train-subset`` images x ``--epochs``, seed, for the committed default recognizer): the default
recipe (the 15 corruptions alone) and a fit on all three families (F seen). The committed default enhancer
(``--committed``, fitted at its own, larger budget) and the recognizer alone are evaluated too.

Every model is evaluated on the first ``--limit`` Fashion-MNIST test images: on the novel shifts at severities
1-5 (benchmarks/novel_shifts.py's evaluation: 8-bit shifted images, batches of ``--batch``, every image
enhanced on its own), and by ``python -m dyntta.evaluate`` on the 15 x 5 benchmark conditions and clean. The
per-family table gives the held-out gain against the recognizer alone, the default recipe at the same
budget and the committed enhancer; a second table each model's clean, 15 x 5 and novel means.

    nice uv run python -m benchmarks.novel_families
    uv run python -m benchmarks.novel_families --train-subset 256 --epochs 1 --limit 50 --root var/nf-smoke \\
        --results var/nf-smoke.json

Finished fits, reports and novel-shift units are reused (see benchmarks/enhancer_runs.py): rerun the same
command to resume. A different budget needs its own ``--root``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.enhancer_runs import Comparison, parser_with_budget, points
from benchmarks.novel_shifts import SETTING, Data, accuracies, build_methods, run_shift, scope, summary
from benchmarks.peers.cache import UnitResult, load_all
from dyntta.data import load_dataset
from dyntta.enhancer import load_enhancer
from dyntta.evaluate.schema import ModelResults
from dyntta.models import load_recognizer
from dyntta.shifts import NOVEL_FAMILIES, SEVERITIES

if TYPE_CHECKING:
    from benchmarks.peers import Adapter

FAMILIES = tuple(NOVEL_FAMILIES)
DEFAULT, SEEN = "no-novel", "all-novel"  # the two reference fits
FITS = (DEFAULT, *(f"without-{f}" for f in FAMILIES), SEEN)
RECOGNIZER, COMMITTED = "recognizer", "committed"


@dataclass(frozen=True)
class Scores:
    """One model on the first ``--limit`` test images, in percentage points."""

    clean: float
    benchmark: float  # mean over the 15 x 5 benchmark conditions
    novel: dict[str, float]  # family -> mean over its shifts and severities (the families it was evaluated on)


@dataclass(frozen=True)
class FamilyRow:
    family: str
    recognizer: float
    committed: float | None
    default: float  # the 15 corruptions alone, same budget
    held_out: float  # fitted on the other two families
    seen: float  # fitted on all three
    held_out_gain: float  # vs the recognizer alone
    held_out_vs_default: float
    held_out_vs_committed: float | None
    seen_gain: float


def held_out(fit: str) -> str | None:
    """The family a fit leaves out (None for the references)."""
    family = fit.removeprefix("without-")
    return family if family in FAMILIES else None


def train_shifts(fit: str) -> list[str]:
    """``--train-shifts`` of a fit: none for the default recipe, every family for the seen one, else all but
    the held-out family."""
    if fit == DEFAULT:
        return []
    return ["--train-shifts", *(f for f in FAMILIES if f != held_out(fit))]


def evaluated_families(model: str) -> tuple[str, ...]:
    """A held-out fit is evaluated on its own family only (what the protocol asks); the others on all."""
    family = held_out(model)
    return FAMILIES if family is None else (family,)


def adapter(recognizer: torch.nn.Module, enhancer: torch.nn.Module | None) -> tuple[str, Callable[[], Adapter]]:
    """benchmarks/novel_shifts.py's method key and adapter factory: the recognizer alone, or behind ``enhancer``."""
    method = "none" if enhancer is None else "dyntta"
    return method, build_methods(recognizer, enhancer or torch.nn.Identity())[method]


def novel_means(
    recognizer: torch.nn.Module,
    enhancer: torch.nn.Module | None,
    families: tuple[str, ...],
    data: Data,
    shifts: argparse.Namespace,
    cache: Path,
) -> dict[str, float]:
    """Per family, accuracy (points) on its shifts, mean over shifts and severities 1-5; units already in
    ``cache`` are not rerun. ``shifts``: what benchmarks/novel_shifts.py's run_shift reads (seed, batch)."""
    method, factory = adapter(recognizer, enhancer)
    severities = list(SEVERITIES)
    names = [name for family in families for name in NOVEL_FAMILIES[family]]
    for name in names:
        if not all(UnitResult.path(cache, method, SETTING, scope(name, s)).exists() for s in severities):
            for unit in run_shift(factory, method, name, severities, data, shifts):
                unit.save(cache)
    _, per_family = summary(accuracies(load_all(cache)).get(method, {}), names, severities)
    return {f: round(per_family[f], 2) for f in families}


def scores(results: ModelResults, novel: dict[str, float]) -> Scores:
    assert results.core is not None, "the reports are run with --corruptions core"
    return Scores(points(results.clean.accuracy), points(results.core.mean), novel)


def family_row(family: str, models: dict[str, Scores]) -> FamilyRow:
    def at(model: str) -> float:
        return models[model].novel[family]

    committed = at(COMMITTED) if COMMITTED in models else None
    held = at(f"without-{family}")
    return FamilyRow(
        family=family,
        recognizer=at(RECOGNIZER),
        committed=committed,
        default=at(DEFAULT),
        held_out=held,
        seen=at(SEEN),
        held_out_gain=round(held - at(RECOGNIZER), 2),
        held_out_vs_default=round(held - at(DEFAULT), 2),
        held_out_vs_committed=None if committed is None else round(held - committed, 2),
        seen_gain=round(at(SEEN) - at(RECOGNIZER), 2),
    )


def markdown(rows: list[FamilyRow], models: dict[str, Scores]) -> str:
    """The per-family table (held-out gains), then each model's clean, 15 x 5 and novel means."""
    head = "| held-out family | recognizer | committed | default recipe | held out (gain; vs default; vs committed) "
    lines = [head + "| seen (gain) |", "|---|---|---|---|---|---|"]
    for r in rows:
        vs_committed = "-" if r.held_out_vs_committed is None else f"{r.held_out_vs_committed:+.2f}"
        committed = "-" if r.committed is None else f"{r.committed:.2f}"
        held = f"{r.held_out:.2f} ({r.held_out_gain:+.2f}; {r.held_out_vs_default:+.2f}; {vs_committed})"
        cells = [
            r.family,
            f"{r.recognizer:.2f}",
            committed,
            f"{r.default:.2f}",
            held,
            f"{r.seen:.2f} ({r.seen_gain:+.2f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | clean | 15 x 5 | " + " | ".join(FAMILIES) + " |", "|---|---|---|" + "---|" * len(FAMILIES)]
    for name, s in models.items():
        novel = [f"{s.novel[f]:.2f}" if f in s.novel else "-" for f in FAMILIES]
        lines.append("| " + " | ".join([name, f"{s.clean:.2f}", f"{s.benchmark:.2f}", *novel]) + " |")
    return "\n".join(lines)


def evaluate_models(enhancers: dict[str, Path], args: argparse.Namespace, run: Comparison) -> dict[str, Scores]:
    """The recognizer alone and each enhancer on the same first ``--limit`` test images: clean and 15 x 5
    (``python -m dyntta.evaluate``), and the novel families it is evaluated on."""
    recognizer = load_recognizer(run.recognizer).eval().requires_grad_(False)
    test = load_dataset("fashion-mnist", "test").subset(torch.arange(run.test_images))  # dyntta.evaluate's --limit
    data, shifts = Data(test.images, test.labels), argparse.Namespace(seed=args.shift_seed, batch=args.batch)
    cache = run.root / f"novel-n{run.test_images}-seed{args.shift_seed}"
    models: dict[str, Scores] = {}
    for model, path in enhancers.items():
        alone, enhanced = run.evaluate(run.root / f"report-{model}", path, "--corruptions", "core")
        if not models:  # every report holds the same recognizer-alone figures: take them once
            novel = novel_means(recognizer, None, FAMILIES, data, shifts, cache / RECOGNIZER)
            models[RECOGNIZER] = scores(alone, novel)
        enhancer = load_enhancer(path).eval().requires_grad_(False)
        novel = novel_means(recognizer, enhancer, evaluated_families(model), data, shifts, cache / model)
        models[model] = scores(enhanced, novel)
    return models


def main() -> None:
    parser = parser_with_budget(__doc__, "var/novel-families")
    parser.set_defaults(results="benchmarks/results/novel_families.json")
    parser.add_argument(
        "--committed",
        default="checkpoints/fashion-mnist/enhancer",
        help="the committed enhancer, for --recognizer's default ('': leave it out)",
    )
    parser.add_argument("--batch", type=int, default=200, help="novel-shift evaluation batch (speed only)")
    parser.add_argument("--shift-seed", type=int, default=0, help="keys the novel shifts' random draws")
    args = parser.parse_args()
    run = Comparison.start("benchmarks.novel_families", args)
    torch.set_num_threads(1)  # like the fits and reports (benchmarks/enhancer_runs.py)

    enhancers = {fit: run.root / f"enhancer-{fit}" for fit in FITS}
    seconds = {fit: run.fit(path, *train_shifts(fit)) for fit, path in enhancers.items()}
    if args.committed:
        enhancers = {COMMITTED: Path(args.committed), **enhancers}
    models = evaluate_models(enhancers, args, run)
    rows = [family_row(family, models) for family in FAMILIES]
    table = markdown(rows, models)
    result = {
        **run.header(),
        "shift_seed": args.shift_seed,
        "train_shifts": {fit: train_shifts(fit)[1:] for fit in FITS},
        "fit_seconds": seconds,
        "rows": [asdict(r) for r in rows],
        "held_out_mean_gain": round(sum(r.held_out_gain for r in rows) / len(rows), 2),
        "held_out_mean_vs_default": round(sum(r.held_out_vs_default for r in rows) / len(rows), 2),
        "models": {name: asdict(s) for name, s in models.items()},
        "table": table,
    }
    run.write(result)
    print(f"\n{table}\n\n{json.dumps({k: result[k] for k in ('held_out_mean_gain', 'held_out_mean_vs_default')})}")


if __name__ == "__main__":
    main()
