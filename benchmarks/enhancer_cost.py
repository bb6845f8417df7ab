"""Enhancer cost relative to its recognizer: FLOPs (torch's FlopCounterMode) and latency, in one run.

uv run python benchmarks/enhancer_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.provenance import Provenance
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer


def flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@torch.no_grad()
def median_ms(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        model(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    provenance = Provenance.start("benchmarks.enhancer_cost")
    torch.set_num_threads(args.threads)
    recognizer = load_recognizer(args.recognizer).eval()
    enhancer = load_enhancer(args.enhancer).eval()
    size = recognizer.config.input_size
    one = torch.rand(1, 3, size, size)
    result = {
        "recognizer_mflops_per_image": flops(recognizer, one) / 1e6,
        "enhancer_mflops_per_image": flops(enhancer, one) / 1e6,
        "recognizer_parameters": recognizer.num_parameters(),
        "enhancer_parameters": enhancer.num_parameters(),
    }
    result["flop_ratio"] = result["enhancer_mflops_per_image"] / result["recognizer_mflops_per_image"]
    for batch in (1, 64):
        x = torch.rand(batch, 3, size, size)
        rec_ms, enh_ms = median_ms(recognizer, x, args.repeats), median_ms(enhancer, x, args.repeats)
        result[f"batch{batch}_recognizer_ms"] = rec_ms
        result[f"batch{batch}_enhancer_ms"] = enh_ms
        result[f"batch{batch}_latency_ratio"] = enh_ms / rec_ms
    # printed only (no results file), with the header: the latencies depend on the machine's load
    provenance.write(None, {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})


if __name__ == "__main__":
    main()
