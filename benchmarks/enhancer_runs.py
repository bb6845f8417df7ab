"""Enhancer fits and their reports through the real commands, for the enhancer benchmarks
(``benchmarks/label_free.py``, ``benchmarks/shift_families.py``). Finished work is reused: a fit whose
directory holds ``fit_seconds.txt``, a report whose ``report.json`` exists."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dyntta.evaluate.schema import ModelResults, Report, read_report

RECOGNIZER = "checkpoints/fashion-mnist/recognizer"
#: the model names ``python -m dyntta.evaluate`` gives with --enhancer
ALONE, ENHANCED = "recognizer", "enhancer + recognizer"


@dataclass(frozen=True)
class Budget:
    """What every fit of one comparison gets: the same images, epochs and seed."""

    train_subset: int
    epochs: int
    seed: int = 0

    def flags(self) -> list[str]:
        return ["--train-subset", str(self.train_subset), "--epochs", str(self.epochs), "--seed", str(self.seed)]


def parser_with_budget(doc: str | None, root: str) -> argparse.ArgumentParser:
    """A benchmark's parser with the flags every enhancer comparison shares; ``budget_of(args)`` reads them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default=RECOGNIZER, help="the frozen recognizer")
    parser.add_argument("--train-subset", type=int, default=12000, help="training images of every fit")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of every fit")
    parser.add_argument("--limit", type=int, default=1000, help="test images of the evaluations")
    parser.add_argument("--root", default=root, help="where fits and reports go")
    parser.add_argument("--results", default=None, help="also write the table here (JSON)")
    return parser


def budget_of(args: argparse.Namespace) -> Budget:
    return Budget(args.train_subset, args.epochs, args.seed)


def run(command: list[str]) -> float:
    """Wall seconds of ``python -m ...`` on one thread."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def fit_enhancer(out: Path, budget: Budget, *flags: str, recognizer: str = RECOGNIZER) -> float:
    """``python -m dyntta.train enhancer`` on Fashion-MNIST with ``budget`` and ``flags``; its wall seconds."""
    timing = out / "fit_seconds.txt"
    if timing.is_file():
        return float(timing.read_text())
    command = ["dyntta.train", "enhancer", "--recognizer", recognizer, "--data", "fashion-mnist"]
    seconds = run([*command, *budget.flags(), "--threads", "1", "--out", str(out), *flags])
    timing.write_text(f"{seconds:.1f}\n")
    return seconds


def evaluate_enhancer(
    out: Path, enhancer: Path, limit: int, *flags: str, recognizer: str = RECOGNIZER
) -> tuple[ModelResults, ModelResults]:
    """``python -m dyntta.evaluate`` of the recognizer alone and with ``enhancer`` on the first ``limit``
    test images: (alone, enhanced)."""
    if not (out / "report.json").is_file():
        command = ["dyntta.evaluate", "--model", recognizer, "--enhancer", str(enhancer), "--limit", str(limit)]
        run([*command, "--threads", "1", "--no-figures", "--out", str(out), *flags])
    report: Report = read_report(out / "report.json")
    return report.models[ALONE], report.models[ENHANCED]


def points(accuracy: float) -> float:
    """An accuracy in [0, 1] as percentage points, two decimals."""
    return round(100 * accuracy, 2)
