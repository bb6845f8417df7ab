"""Label-free against labelled enhancer fitting with the same budget (issue 13 section 2).

Both fits use the real command, ``python -m dyntta.train enhancer``, on the same training images, epochs,
batch, learning rate and seed, for the committed default recognizer; one with the data set's labels
(cross-entropy), one with ``--labels none`` (the recognizer's softened clean prediction as target). Each is
then evaluated with ``python -m dyntta.evaluate`` on the first ``--limit`` Fashion-MNIST test images: clean,
the 15 benchmark corruptions x 5 severities (the target's "15 x 5 mean") and the 4 extra ones.
Target: label-free within 1 point of labelled on the 15 x 5 mean.

    nice uv run python -m benchmarks.label_free                                  # 12,000 images x 2 epochs
    uv run python -m benchmarks.label_free --train-subset 512 --epochs 1 --limit 100 --root var/lf-smoke

Finished fits and reports are reused (delete ``--root`` to start over); the table goes to
``benchmarks/results/label_free.json`` (with ``--results``) and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dyntta.evaluate.schema import read_report

RECOGNIZER = "checkpoints/fashion-mnist/recognizer"
FITS = {"labelled": ["--labels", "dataset"], "label-free": ["--labels", "none"]}


@dataclass(frozen=True)
class Row:
    fit: str
    fit_seconds: float
    clean: float
    benchmark_15x5: float
    extra_4x5: float | None
    recognizer_clean: float
    recognizer_15x5: float


def _run(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(1)})
    return time.perf_counter() - started


def fit(name: str, args: argparse.Namespace, root: Path) -> float:
    out = root / f"enhancer-{name}"
    timing = out / "fit_seconds.txt"
    if timing.is_file():
        return float(timing.read_text())
    command = [sys.executable, "-m", "dyntta.train", "enhancer", "--recognizer", args.recognizer]
    command += ["--data", "fashion-mnist", "--epochs", str(args.epochs), "--train-subset", str(args.train_subset)]
    command += ["--seed", str(args.seed), "--threads", "1", "--out", str(out), *FITS[name]]
    seconds = _run(command)
    timing.write_text(f"{seconds:.1f}\n")
    return seconds


def evaluate(name: str, args: argparse.Namespace, root: Path) -> Path:
    out = root / f"report-{name}"
    if not (out / "report.json").is_file():
        command = [sys.executable, "-m", "dyntta.evaluate", "--model", args.recognizer]
        command += ["--enhancer", str(root / f"enhancer-{name}"), "--limit", str(args.limit)]
        command += ["--threads", "1", "--no-figures", "--out", str(out)]
        _run(command)
    return out / "report.json"


def row(name: str, seconds: float, report_path: Path) -> Row:
    report = read_report(report_path)
    alone, with_enhancer = report.models["recognizer"], report.models["enhancer + recognizer"]  # evaluate's names
    assert with_enhancer.core is not None and alone.core is not None
    return Row(
        fit=name,
        fit_seconds=round(seconds, 1),
        clean=round(100 * with_enhancer.clean.accuracy, 2),
        benchmark_15x5=round(100 * with_enhancer.core.mean, 2),
        extra_4x5=round(100 * with_enhancer.extras.mean, 2) if with_enhancer.extras else None,
        recognizer_clean=round(100 * alone.clean.accuracy, 2),
        recognizer_15x5=round(100 * alone.core.mean, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default=RECOGNIZER, help="the frozen recognizer")
    parser.add_argument("--train-subset", type=int, default=12000, help="training images of both fits")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of both fits")
    parser.add_argument("--seed", type=int, default=0, help="seed of both fits")
    parser.add_argument("--limit", type=int, default=1000, help="test images of the evaluations")
    parser.add_argument("--root", default="var/label-free", help="where fits and reports go")
    parser.add_argument("--results", default=None, help="also write the table here (JSON)")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()
    rows = []
    for name in FITS:
        seconds = fit(name, args, root)
        rows.append(row(name, seconds, evaluate(name, args, root)))
    labelled, label_free = rows
    gap = round(label_free.benchmark_15x5 - labelled.benchmark_15x5, 2)
    result = {
        "command": "python -m benchmarks.label_free " + " ".join(sys.argv[1:]),
        "budget": {"train_subset": args.train_subset, "epochs": args.epochs, "seed": args.seed},
        "test_images": args.limit,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "rows": [asdict(r) for r in rows],
        "label_free_minus_labelled_15x5": gap,
        "target_within_1_point": gap >= -1.0,
    }
    if args.results:
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
