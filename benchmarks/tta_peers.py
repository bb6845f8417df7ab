"""Test-time adaptation peers and DynTTA on the same recognizer, data and CPU core (issue 13 section 4).

Methods (benchmarks/peers/): the recognizer alone; flip TTA (ttach, 2 passes); BN-statistics adaptation;
TENT (online, reset per condition in the homogeneous setting); MEMO (per image, episodic); the DynTTA
enhancer (per image); DynTTA then BN adaptation. Settings:
- ``single``: the shuffled stream one image at a time (what a server sees);
- ``mixed64``: the same stream in batches of 64 (mixed corruptions, as a dynamic batcher would form them);
- ``homogeneous200``: batches of 200 from one corruption and severity (BN adaptation's and TENT's best case).
Every method except TENT starts from the source weights on every call (episodic); TENT carries its update to
the next batch of the same episode: the whole stream in the serving settings, one corruption type (its
severities 1 to 5 in turn, 200 images each) in the homogeneous one, as the TENT paper resets per type.
MEMO is per image by definition (one weight copy per image; a batch would change nothing but the
bookkeeping), so it runs in ``single`` only. ``single`` runs on the first ``--single-images`` of the
shuffled stream (its own "recognizer alone" row is the baseline to compare with).

The stream is the first ``--images`` Fashion-MNIST test images, clean and under the 19 corruptions of
dyntta.corruptions (``--seed``) at ``--severities``. Accuracy per family is pooled over its conditions; the
15-corruption mean is the mean of the 15 benchmark corruptions' accuracies; latency is wall time inside the
method per image on ``--threads`` threads. Results are cached per unit in ``--cache``; rerun the same
command to resume (``--budget-s`` bounds one call).

    uv run python benchmarks/tta_peers.py --images 200 --budget-s 360
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.peers import Adapter, BatchNormAdapt, Memo, Stateless, Tent, flip_tta
from benchmarks.peers.cache import UnitResult, load_all
from benchmarks.peers.stream import FAMILIES, Stream, build_stream
from benchmarks.peers.table import Row, markdown, summarise
from benchmarks.provenance import Provenance
from dyntta.data import to_float
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer

SETTINGS: tuple[str, ...] = ("single", "mixed64", "homogeneous200")
PER_IMAGE_ONLY = {"memo"}  # one weight copy per image: a batch changes nothing but the bookkeeping


Methods = dict[str, tuple[str, Callable[[], Adapter]]]


def build_methods(recognizer: torch.nn.Module, enhancer: torch.nn.Module) -> Methods:
    """Method key -> (display name, factory of a fresh adapter on the source weights)."""

    def dyntta_bn() -> Adapter:
        bn = BatchNormAdapt(recognizer)  # the recognizer's BN only: the enhancer stays per image
        return Stateless(lambda x: bn(enhancer(x)))

    return {
        "none": ("recognizer alone", lambda: Stateless(recognizer)),
        "flip": ("flip TTA (ttach, 2 passes)", lambda: Stateless(flip_tta(recognizer))),
        "bn": ("BN adaptation", lambda: BatchNormAdapt(recognizer)),
        "tent": ("TENT (online)", lambda: Tent(recognizer)),
        "memo": ("MEMO (8 AugMix copies, 1 step)", lambda: Memo(recognizer)),
        "dyntta": ("DynTTA enhancer", lambda: Stateless(lambda x: recognizer(enhancer(x)))),
        "dyntta_bn": ("DynTTA + BN adaptation", dyntta_bn),
    }


Counts = dict[str, tuple[int, int]]  # condition name -> (correct, images)


def run_unit(adapter: Adapter, stream: Stream, episodes: list[list[torch.Tensor]]) -> tuple[Counts, float, int]:
    """Run ``adapter`` over ``episodes`` (reset before each): per-condition counts, seconds inside it, images."""
    correct = torch.zeros(len(stream.conditions), dtype=torch.long)
    total = torch.zeros_like(correct)
    seconds, images = 0.0, 0
    for episode in episodes:
        adapter.reset()
        for index in episode:
            x = to_float(stream.images[index])
            started = time.perf_counter()
            logits = adapter(x)
            seconds += time.perf_counter() - started
            hit = (logits.argmax(1) == stream.labels[index]).long()
            correct.index_add_(0, stream.condition[index], hit)
            total.index_add_(0, stream.condition[index], torch.ones_like(hit))
            images += len(index)
    counts = {c.name: (int(correct[i]), int(total[i])) for i, c in enumerate(stream.conditions) if total[i]}
    return counts, seconds, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--images", type=int, default=200, help="test images per condition")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--single-images", type=int, default=4000, help="stream prefix for the single setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=None, help="method keys (default: all)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--cache", type=Path, default=Path("var/tta-peers"))
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no new unit after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the table's rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    provenance = Provenance.start("benchmarks.tta_peers")
    recognizer = load_recognizer(args.recognizer).eval().requires_grad_(False)
    enhancer = load_enhancer(args.enhancer).eval().requires_grad_(False)
    methods = build_methods(recognizer, enhancer)
    unknown = set(args.methods or ()) - set(methods)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; expected {', '.join(methods)}")
    keys = args.methods or list(methods)
    key = f"n{args.images}-sev{''.join(map(str, args.severities))}-seed{args.seed}"
    stream = build_stream(args.images, args.severities, args.seed, args.cache / f"stream-{key}.pt")
    key += f"-single{args.single_images}"
    results = args.cache / key
    done = True
    # batch settings first, costly per-image MEMO last: an interrupted budget loses the least
    plan = [(m, s) for s in sorted(args.settings, key=lambda s: s == "single") for m in keys]
    for method, setting in sorted(plan, key=lambda p: p[0] in PER_IMAGE_ONLY):
        name, factory = methods[method]
        if method in PER_IMAGE_ONLY and setting != "single":
            continue
        online = factory().online
        # a family can run alone unless batch mates (mixed batches) or online state (serving stream) matter
        whole = setting == "mixed64" or (online and setting == "single")
        for scope in ["all"] if whole else list(FAMILIES):
            if UnitResult.path(results, method, setting, scope).exists():
                continue
            if time.monotonic() - started > args.budget_s:
                done = False
                continue
            torch.manual_seed(args.seed)
            episodes = stream.batches(setting, None if scope == "all" else scope, args.single_images)
            counts, seconds, images = run_unit(factory(), stream, episodes)
            UnitResult(method, setting, scope, counts, seconds, images).save(results)
            print(
                f"{name:34s} {setting:15s} {scope:8s} {images:6d} images {1000 * seconds / images:8.2f} ms/image",
                flush=True,
            )
    units = load_all(results)
    rows: list[Row] = []
    for setting in SETTINGS:
        for method in methods:
            name = methods[method][0]
            row = summarise(units, method, setting)
            if row is not None:
                row.method = name
                rows.append(row)
    print(f"\n{key}, {args.threads} thread(s); {'complete' if done else 'INCOMPLETE: rerun to resume'}\n")
    print(markdown(rows))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"config": config, "complete": done, "rows": [asdict(r) for r in rows]}
    provenance.write(args.json, result, echo=False)  # the table is printed above
    return 0 if done else 3


if __name__ == "__main__":
    sys.exit(main())
