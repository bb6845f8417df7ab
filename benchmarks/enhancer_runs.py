"""Enhancer fits and their reports through the real commands, for the enhancer benchmarks
(``benchmarks/label_free.py``, ``benchmarks/shift_families.py``, ``benchmarks/novel_families.py``): their
shared flags and setup (:class:`Comparison`). Finished work is reused: a fit whose directory holds
``fit_seconds.txt``, a report whose ``report.json`` exists; so a different budget or recipe needs its own
``--root``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.provenance import Provenance, write_json
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
    """A benchmark's parser with the flags every enhancer comparison shares; :meth:`Comparison.start` reads them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default=RECOGNIZER, help="the frozen recognizer")
    parser.add_argument("--train-subset", type=int, default=12000, help="training images of every fit")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every fit")
    parser.add_argument("--seed", type=int, default=0, help="seed of every fit")
    parser.add_argument("--limit", type=int, default=1000, help="test images of the evaluations")
    parser.add_argument("--root", default=root, help="where fits and reports go")
    parser.add_argument("--results", default=None, help="also write the table here (JSON)")
    parser.add_argument(
        "--extra-fit-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="flags for every fit, to compare recipes (e.g. --clean-weight 0 or --blind); give it last",
    )
    return parser


@dataclass(frozen=True)
class Comparison:
    """One run of an enhancer benchmark, from :func:`parser_with_budget`'s flags: where its fits and reports
    go, what every fit gets, and what its results file records about the run."""

    provenance: Provenance
    root: Path
    budget: Budget
    recognizer: str
    test_images: int
    extra_fit_args: tuple[str, ...]
    results: Path | None  # --results

    @classmethod
    def start(cls, module: str, args: argparse.Namespace) -> Comparison:
        """Creates ``--root`` and notes the command, commit and load average before any work."""
        provenance = Provenance.start(module)
        root = Path(args.root)
        root.mkdir(parents=True, exist_ok=True)
        budget = Budget(args.train_subset, args.epochs, args.seed)
        extra, results = tuple(args.extra_fit_args), Path(args.results) if args.results else None
        return cls(provenance, root, budget, args.recognizer, args.limit, extra, results)

    def fit(self, out: Path, *flags: str) -> float:
        """:func:`fit_enhancer` with this comparison's budget, recognizer and ``--extra-fit-args``."""
        return fit_enhancer(out, self.budget, *flags, *self.extra_fit_args, recognizer=self.recognizer)

    def evaluate(self, out: Path, enhancer: Path, *flags: str) -> tuple[ModelResults, ModelResults]:
        """:func:`evaluate_enhancer` on this comparison's test images and recognizer."""
        return evaluate_enhancer(out, enhancer, self.test_images, *flags, recognizer=self.recognizer)

    def header(self) -> dict[str, object]:
        """The head of the results file: how the figures were obtained (:meth:`Provenance.header`, then what
        every fit and evaluation got)."""
        return {
            **self.provenance.header(),
            "budget": asdict(self.budget),
            "extra_fit_args": list(self.extra_fit_args),
            "test_images": self.test_images,
        }

    def write(self, result: dict[str, object]) -> None:
        """Writes ``result`` (:meth:`header` and the figures) as JSON to ``--results``, if given."""
        write_json(self.results, result)


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
