"""Shifts the enhancer never saw (issue 13 section 3): the recognizer alone vs the DynTTA enhancer vs batch
test-time adaptation on geometric, occlusion and appearance shifts absent from the 19-corruption suite.

The first ``--images`` Fashion-MNIST test images (the one preprocessing contract: ``dyntta.data``'s loader,
then :func:`dyntta.data.to_float`) go through every novel shift of :mod:`dyntta.shifts` (``--seed``) at
``--severities``, quantised to 8 bits like any served image, in homogeneous batches of ``--batch`` (one shift
and severity per batch). Methods (``--methods``): the recognizer alone; the DynTTA enhancer then the
recognizer (eval mode, so every image is enhanced on its own: the batch is only for speed); BN-statistics
adaptation (episodic, benchmarks/peers/norm.py); TENT (online, reset per shift type and run through its
severities in increasing order, as benchmarks/tta_peers.py does per corruption type). Plus the clean row.

Accuracy per (method, shift, severity) is cached in ``--cache`` (one file per unit; TENT's units of one shift
are written together, its episode being the whole shift): kill the run and rerun the same command to resume.
Tables: per family and per shift (mean over severities), with each method's difference to the recognizer
alone, printed and written with all figures to ``--out``.

    nice uv run python -m benchmarks.novel_shifts --images 1000 --threads 1
    uv run python -m benchmarks.novel_shifts --images 200 --shifts rotate invert --severities 3 \\
        --cache var/novel-shifts-smoke --out var/novel-shifts-smoke.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.provenance import Provenance
from dyntta.cli import ArgumentParser, UsageError, run
from dyntta.shifts import FAMILY_OF, NOVEL_FAMILIES, NOVEL_SHIFTS, SEVERITIES

if TYPE_CHECKING:
    import torch

    from benchmarks.peers import Adapter
    from benchmarks.peers.cache import UnitResult

CLEAN = "clean"
METHODS: dict[str, str] = {
    "none": "recognizer alone",
    "dyntta": "DynTTA enhancer",
    "bn": "BN adaptation",
    "tent": "TENT (online)",
}
SETTING = "homogeneous"  # the cache's setting field: batches of one shift and severity


@dataclass
class Data:
    images: torch.Tensor  # uint8 (N, 3, S, S), the preprocessing contract's output
    labels: torch.Tensor  # int64 (N,)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.novel_shifts", description=__doc__)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer", help="recognizer checkpoint")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer", help="enhancer checkpoint")
    parser.add_argument("--images", type=int, default=1000, help="first test images, per shift and severity")
    parser.add_argument("--shifts", nargs="+", default=list(NOVEL_SHIFTS), choices=NOVEL_SHIFTS, help="shifts")
    parser.add_argument(
        "--severities", type=int, nargs="+", default=list(SEVERITIES), choices=SEVERITIES, help="severities"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods")
    parser.add_argument("--batch", type=int, default=200, help="homogeneous batch size")
    parser.add_argument("--seed", type=int, default=0, help="keys every shift's random draws")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache", type=Path, default=Path("var/novel-shifts"), help="per-unit results")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/novel_shifts.json"), help="JSON")
    return parser


def build_methods(recognizer: torch.nn.Module, enhancer: torch.nn.Module) -> dict[str, Callable[[], Adapter]]:
    """Method key -> factory of a fresh adapter on the source weights (the peers of benchmarks/tta_peers.py)."""
    from benchmarks.peers import BatchNormAdapt, Stateless, Tent

    return {
        "none": lambda: Stateless(recognizer),
        "dyntta": lambda: Stateless(lambda x: recognizer(enhancer(x))),
        "bn": lambda: BatchNormAdapt(recognizer),
        "tent": lambda: Tent(recognizer),
    }


def condition(name: str, severity: int) -> str:
    return CLEAN if name == CLEAN else f"{name}/{severity}"


def shifted(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """uint8 images under a novel shift, rounded back to 8 bits as a served image would be."""
    from dyntta.data import to_float
    from dyntta.shifts import shift

    if name == CLEAN:
        return images
    return (shift(to_float(images), name, severity, seed=seed) * 255).round().to(images.dtype)


def evaluate(adapter: Adapter, images: torch.Tensor, labels: torch.Tensor, batch: int) -> tuple[int, float]:
    """Correct predictions and seconds inside the adapter over ``images`` in batches (no reset: the caller's)."""
    from dyntta.data import to_float

    correct, seconds = 0, 0.0
    for start in range(0, len(labels), batch):
        x = to_float(images[start : start + batch])
        began = time.perf_counter()
        logits = adapter(x)
        seconds += time.perf_counter() - began
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct, seconds


def scope(name: str, severity: int) -> str:
    return f"{name}-{severity}"


def run_shift(
    factory: Callable[[], Adapter], method: str, name: str, severities: list[int], data: Data, args: argparse.Namespace
) -> list[UnitResult]:
    """One method on one shift's severities (increasing). An online method keeps its state across them
    (one episode per shift type); episodic ones start afresh every batch anyway."""
    from benchmarks.peers.cache import UnitResult

    adapter = factory()
    adapter.reset()
    units = []
    for severity in severities:
        images = shifted(data.images, name, severity, args.seed)
        correct, seconds = evaluate(adapter, images, data.labels, args.batch)
        counts = {condition(name, severity): (correct, len(data.labels))}
        units.append(UnitResult(method, SETTING, scope(name, severity), counts, seconds, len(data.labels)))
    return units


def plan(args: argparse.Namespace) -> list[tuple[str, list[int]]]:
    """(shift, severities) per episode: clean alone, then every requested shift."""
    return [(CLEAN, [0])] + [(name, sorted(set(args.severities))) for name in args.shifts]


def accuracies(units: list[UnitResult]) -> dict[str, dict[str, float]]:
    """method -> condition -> percent correct."""
    table: dict[str, dict[str, float]] = {}
    for u in units:
        for name, (correct, total) in u.counts.items():
            table.setdefault(u.method, {})[name] = 100 * correct / total
    return table


def summary(acc: dict[str, float], shifts: list[str], severities: list[int]) -> tuple[dict[str, float], ...]:
    """Per shift (mean over severities) and per family (mean over its shifts), for one method; plus "all"."""
    per_shift = {}
    for name in shifts:
        values = [acc[condition(name, s)] for s in severities if condition(name, s) in acc]
        if len(values) == len(severities):
            per_shift[name] = statistics.fmean(values)
    per_family = {
        family: statistics.fmean(per_shift[n] for n in names if n in per_shift)
        for family, names in NOVEL_FAMILIES.items()
        if any(n in per_shift for n in names)
    }
    if per_shift:
        per_family["all"] = statistics.fmean(per_shift.values())
    if CLEAN in acc:
        per_family = {CLEAN: acc[CLEAN], **per_family}
    return per_shift, per_family


def markdown(rows: dict[str, dict[str, float]], methods: list[str], label: str, shifts: list[str]) -> str:
    """Rows (shift or family) x methods; every method but the recognizer alone with its difference to it.
    A family only partly run (``--shifts``) says how much of it its row covers."""
    head = [label] + [METHODS[m] + ("" if m == "none" else " (Δ)") for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys(k for m in methods for k in rows.get(m, {})))
    for key in keys:
        base = rows.get("none", {}).get(key)
        cells = []
        for m in methods:
            value = rows.get(m, {}).get(key)
            if value is None:
                cells.append("-")
            elif m == "none" or base is None:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({value - base:+.2f})")
        name = f"{key} ({FAMILY_OF[key]})" if key in FAMILY_OF else key
        if key in NOVEL_FAMILIES and not set(NOVEL_FAMILIES[key]) <= set(shifts):
            name += f" ({len(set(NOVEL_FAMILIES[key]) & set(shifts))} of {len(NOVEL_FAMILIES[key])} shifts)"
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def handle(args: argparse.Namespace, provenance: Provenance) -> int:
    import torch
    from tqdm import tqdm

    from benchmarks.peers.cache import UnitResult, load_all
    from dyntta.data import load_dataset
    from dyntta.enhancer import load_enhancer
    from dyntta.models import load_recognizer

    if args.images < 1 or args.batch < 1 or args.threads < 1:
        raise UsageError("--images, --batch and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    recognizer = load_recognizer(args.recognizer).eval().requires_grad_(False)
    enhancer = load_enhancer(args.enhancer).eval().requires_grad_(False)
    factories = build_methods(recognizer, enhancer)
    test = load_dataset("fashion-mnist", "test").subset(torch.arange(args.images))
    data = Data(test.images, test.labels)
    severities = sorted(set(args.severities))
    # TENT's figures depend on the severities before them in its episode, so the schedule is part of the key
    results = args.cache / f"n{args.images}-sev{''.join(map(str, severities))}-seed{args.seed}-b{args.batch}"
    todo = [
        (method, name, sevs)
        for name, sevs in plan(args)
        for method in args.methods
        if not all(UnitResult.path(results, method, SETTING, scope(name, s)).exists() for s in sevs)
    ]
    for method, name, sevs in tqdm(todo, desc="novel shifts", unit="unit"):
        for unit in run_shift(factories[method], method, name, sevs, data, args):
            unit.save(results)  # an episode's units are saved together: a killed episode reruns whole
    acc = accuracies([u for u in load_all(results) if u.method in args.methods])
    shifts = [n for n in NOVEL_SHIFTS if n in args.shifts]
    per_shift, per_family = {}, {}
    for method in args.methods:
        per_shift[method], per_family[method] = summary(acc.get(method, {}), shifts, severities)
    tables = {
        "family": markdown(per_family, args.methods, "family (mean over its shifts and severities)", shifts),
        "shift": markdown(per_shift, args.methods, "shift (mean over severities)", shifts),
    }
    header = f"{args.images} Fashion-MNIST test images, severities {severities}, seed {args.seed}, batches of "
    print(f"\n{header}{args.batch}, {args.threads} thread(s)\n\n{tables['family']}\n\n{tables['shift']}")
    write_json(args, provenance, acc, per_shift, per_family, tables)
    return 0


def write_json(
    args: argparse.Namespace,
    provenance: Provenance,
    acc: dict[str, dict[str, float]],
    per_shift: dict[str, dict[str, float]],
    per_family: dict[str, dict[str, float]],
    tables: dict[str, str],
) -> None:
    def delta(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        base = rows.get("none", {})
        return {m: {k: v - base[k] for k, v in r.items() if k in base} for m, r in rows.items() if m != "none"}

    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {
        "config": config,
        "methods": {m: METHODS[m] for m in args.methods},
        "families": NOVEL_FAMILIES,
        "accuracy": acc,
        "per_shift": per_shift,
        "per_family": per_family,
        "delta_vs_recognizer": {"per_shift": delta(per_shift), "per_family": delta(per_family)},
        "tables": tables,
    }
    provenance.write(args.out, report, echo=False)  # the tables are printed by handle


def main(argv: Sequence[str] | None = None) -> int:
    provenance = Provenance.start("benchmarks.novel_shifts", argv)
    return run(build_parser(), lambda args: handle(args, provenance), argv)


if __name__ == "__main__":
    sys.exit(main())
