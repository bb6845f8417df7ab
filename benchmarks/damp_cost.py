"""DAMP's training-step cost against ERM's on CPU (issue 14: <= 1.15x with M = 1 micro-batch; M = 8 reported).

One process, one thread, the same batch (``--batch`` Fashion-MNIST training images at 32 px) for every
method; steps interleaved (ERM, DAMP M = 1, DAMP M = 8, ERM, ...) so that load on the machine falls on all
of them alike; the median step time of each over ERM's. Architectures: the default recognizer's
(``resnet18_half``, small-input stem) and timm's tiny ``test_resnet``.

    nice uv run python -m benchmarks.damp_cost --results benchmarks/results/damp_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from tqdm import tqdm

from benchmarks.provenance import Provenance
from dyntta.data import load_dataset
from dyntta.data.transforms import to_float
from dyntta.models import create_recognizer
from dyntta.robust import TrainingStrategy, create_strategy


def step_times(arch: str, batch: int, steps: int, warmup: int, sigma: float) -> dict[str, float]:
    """Median seconds per step of ERM and DAMP (M = 1 and M = 8), interleaved on one batch."""
    data = load_dataset("fashion-mnist", "train").subset(torch.arange(batch))
    images, labels = to_float(data.images), data.labels
    runs: dict[str, tuple[torch.nn.Module, TrainingStrategy, torch.optim.Optimizer]] = {}
    for key, (method, args) in {
        "erm": ("erm", {}),
        "damp_m1": ("damp", {"sigma": sigma, "micro_batches": 1}),
        "damp_m8": ("damp", {"sigma": sigma, "micro_batches": 8}),
    }.items():
        torch.manual_seed(0)
        small = arch != "test_resnet"
        model = create_recognizer(arch, data.classes, input_size=32, small_input=small).train()
        strategy = create_strategy(method, label_smoothing=0.1, **args)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[key] = (model, strategy, optimizer)
    times: dict[str, list[float]] = {key: [] for key in runs}
    for i in tqdm(range(warmup + steps), desc=arch, file=sys.stderr):
        for key, (net, method_strategy, opt) in runs.items():
            started = time.perf_counter()
            method_strategy.training_step(net, images, labels, opt)
            if i >= warmup:
                times[key].append(time.perf_counter() - started)
    return {key: statistics.median(t) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18_half", "test_resnet"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    provenance = Provenance.start("benchmarks.damp_cost")
    rows = []
    for arch in args.archs:
        seconds = step_times(arch, args.batch, args.steps, args.warmup, args.sigma)
        erm = seconds["erm"]
        rows.append(
            {
                "arch": arch,
                "erm_step_s": round(erm, 4),
                "damp_m1_x_erm": round(seconds["damp_m1"] / erm, 3),
                "damp_m8_x_erm": round(seconds["damp_m8"] / erm, 3),
            }
        )
    result = {
        "batch": args.batch,
        "steps": args.steps,
        "threads": 1,
        "rows": rows,
        "target_m1_<=_1.15": all(r["damp_m1_x_erm"] <= 1.15 for r in rows),
    }
    provenance.write(args.results, result)


if __name__ == "__main__":
    main()
