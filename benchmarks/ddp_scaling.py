"""Data-parallel scaling (issue 12): training images/s with 1 and N processes x 1 thread, and sharded vs
single-process evaluation wall time (and whether the two reports are equal). Every figure comes from the
real commands (torchrun for N > 1).

    uv run python -m benchmarks.ddp_scaling --train-subset 6000 --eval-limit 10000        # CPU, idle machine
    uv run python -m benchmarks.ddp_scaling --device cuda --nproc 1                        # one GPU
    uv run python -m benchmarks.ddp_scaling --device cuda --nproc 8                        # N GPUs (nccl)
    uv run python -m benchmarks.ddp_scaling --train-subset 512 --eval-limit 200 --epochs 1 # smoke

Training throughput is the last epoch's ``images_per_second`` in the checkpoint's history (global images,
all ranks together; the first epoch includes warm-up). Evaluation: the Fashion-MNIST-C report of the
default recognizer (``--eval-limit`` test images, 19 corruptions x 5 severities), wall clock of the command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import Provenance
from dyntta.evaluate.sharded import without_run_specifics
from dyntta.models import read_checkpoint_meta

ROOT = Path("var/ddp-scaling")
RECOGNIZER = "checkpoints/fashion-mnist/recognizer"


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m"]


def run(command: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def train(kind: str, nproc: int, args: argparse.Namespace) -> float:
    out = ROOT / f"{kind}-{args.device}-{nproc}"
    for stale in ("train_state.pt",):  # always a fresh run
        (out / stale).unlink(missing_ok=True)
    common = ["--epochs", str(args.epochs), "--train-subset", str(args.train_subset), "--device", args.device]
    common += ["--batch-size", str(args.batch_size), "--out", str(out)]
    if args.device == "cpu":
        common += ["--threads", "1"]
    if kind == "recognizer":
        command = [*launcher(nproc), "dyntta.train", "recognizer", "--arch", args.arch, *common]
    else:
        command = [*launcher(nproc), "dyntta.train", "enhancer", "--recognizer", RECOGNIZER, *common]
    run(command)
    return float(read_checkpoint_meta(out)["metrics"]["history"][-1]["images_per_second"])


def evaluate(nproc: int, args: argparse.Namespace) -> float:
    out = ROOT / f"report-{args.device}-{nproc}"
    command = [*launcher(nproc), "dyntta.evaluate", "--model", RECOGNIZER, "--limit", str(args.eval_limit)]
    command += ["--device", args.device, "--no-cache", "--no-figures", "--out", str(out)]
    if args.device == "cpu":
        command += ["--threads", "1"]
    return run(command)


def reports_equal(nproc: int, args: argparse.Namespace) -> bool:
    """The sharded report equals the single-process one, timings, dates and paths aside (issue 12)."""

    def load(n: int) -> dict[str, Any]:
        return without_run_specifics(json.loads((ROOT / f"report-{args.device}-{n}" / "report.json").read_text()))

    return load(1) == load(nproc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--arch", default="resnet18_half")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--eval-limit", type=int, default=10000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["recognizer", "enhancer", "evaluate"])
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    # The end-of-run load average includes the benchmark itself; the start one says whether the machine was idle.
    provenance = Provenance.start("benchmarks.ddp_scaling")
    results: dict[str, dict[str, float]] = {}
    for kind in ("recognizer", "enhancer"):
        if kind in args.skip:
            continue
        one, many = train(kind, 1, args), train(kind, args.nproc, args)
        results[f"{kind}_images_per_second"] = {"1": one, str(args.nproc): many, "speed-up": round(many / one, 2)}
    if "evaluate" not in args.skip:
        one, many = evaluate(1, args), evaluate(args.nproc, args)
        results["evaluate_seconds"] = {
            "1": round(one, 1),
            str(args.nproc): round(many, 1),
            "speed-up": round(one / many, 2),
            "reports_equal": reports_equal(args.nproc, args),
        }
    provenance.write(ROOT / f"results-{args.device}-{args.nproc}.json", results)


if __name__ == "__main__":
    main()
