"""A per-image confidence gate between the recognizer alone and enhancer + recognizer (issue 13 section 3).

Question: can the enhancer's losses on shifts it never saw (edge maps, lines, shear) be stopped at test time,
image by image, by keeping whichever of the two predictions is the more confident, without giving back its
gains on the corruptions it fixes? Gates: lower softmax entropy, higher maximum probability; and the average of
the two softmaxes. Every image is decided on its own (batch-independent, as the server needs).

Data: the first ``--images`` Fashion-MNIST test images, clean, under the 9 novel shifts of
:mod:`dyntta.shifts` and the 19 corruptions of :mod:`dyntta.corruptions` at severities 1-5 (seed 0), rounded
to 8 bits as the server receives them (dyntta.evaluate's ``quantise``, as in the robustness reports).
Printed per condition as it goes; the summary per family at the end.

    nice uv run python -m benchmarks.confidence_gate --results benchmarks/results/confidence_gate.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections.abc import Callable

import torch

from benchmarks.provenance import Provenance
from dyntta.contract import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS
from dyntta.corruptions import corrupt
from dyntta.data import load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.evaluate.predictions import quantise
from dyntta.models import load_recognizer
from dyntta.shifts import FAMILY_OF, NOVEL_SHIFTS, shift

RULES = ("alone", "enhanced", "gate_entropy", "gate_maxprob", "average")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(1)


@torch.no_grad()
def accuracies(
    recognizer: torch.nn.Module, enhancer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Top-1 (%) of each rule on images ``x`` (float, 8-bit values)."""
    alone = torch.cat([recognizer(b) for b in x.split(250)]).softmax(1)
    enhanced = torch.cat([recognizer(enhancer(b).clamp(0, 1)) for b in x.split(250)]).softmax(1)
    picks = {
        "alone": alone,
        "enhanced": enhanced,
        "gate_entropy": torch.where((_entropy(enhanced) <= _entropy(alone))[:, None], enhanced, alone),
        "gate_maxprob": torch.where((enhanced.max(1).values >= alone.max(1).values)[:, None], enhanced, alone),
        "average": (alone + enhanced) / 2,
    }
    return {rule: 100 * (p.argmax(1) == y).float().mean().item() for rule, p in picks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    provenance = Provenance.start("benchmarks.confidence_gate")
    recognizer = load_recognizer(args.recognizer).eval()
    enhancer = load_enhancer(args.enhancer).eval()
    test = load_dataset("fashion-mnist", "test", image_size=recognizer.config.input_size)
    test = test.subset(torch.arange(args.images))
    x, y = to_float(test.images), test.labels

    conditions: dict[str, Callable[[int], torch.Tensor]] = {
        **{name: functools.partial(shift, x, name) for name in NOVEL_SHIFTS},
        **{name: functools.partial(corrupt, x, name) for name in (*BENCHMARK_CORRUPTIONS, *EXTRA_CORRUPTIONS)},
    }
    per_condition = {"clean": accuracies(recognizer, enhancer, x, y)}
    for name, make in conditions.items():
        runs = [accuracies(recognizer, enhancer, to_float(quantise(make(s))), y) for s in range(1, 6)]
        per_condition[name] = {rule: statistics.fmean(r[rule] for r in runs) for rule in RULES}
        print(name, {k: round(v, 2) for k, v in per_condition[name].items()}, file=sys.stderr, flush=True)

    families = {
        "clean": ["clean"],
        "15 corruptions": list(BENCHMARK_CORRUPTIONS),
        "4 extras": list(EXTRA_CORRUPTIONS),
        **{f"novel {f}": [n for n in NOVEL_SHIFTS if FAMILY_OF[n] == f] for f in dict.fromkeys(FAMILY_OF.values())},
        "novel, all nine": list(NOVEL_SHIFTS),
    }
    summary = {
        family: {rule: round(statistics.fmean(per_condition[n][rule] for n in names), 2) for rule in RULES}
        for family, names in families.items()
    }
    result = {"images": args.images, "summary": summary, "per_condition": per_condition}
    provenance.write(args.results, result, echo=False)
    print(json.dumps(summary, indent=2))  # the summary only: per condition went to stderr as it ran


if __name__ == "__main__":
    main()
