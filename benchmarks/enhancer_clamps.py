"""Published per-op clamps applied to the committed DynTTA enhancer (issue 17, "DynTTA op ranges and clamps").

The published DynTTA ops brightness, contrast, gamma and saturation clamp their own outputs to [0, 1] before the
blend; ours clamp only the blended result (dyntta/enhancer/ops.py says why). This measures what the published
clamps would do to the committed enhancer without retraining it: enhancer + recognizer top-1 with the blend-only
clamp (as committed and exported) and with the four ops swapped for clamped copies (:func:`per_op_clamps`, on the
loaded model only: the library is untouched), the share of images on which both predict the same class, the mean
change of the enhanced image, and the share of images on which a clamp can change anything at all (one of the four
ops leaves [0, 1] at its predicted magnitude; the results file has it op by op: kornia's gamma already clamps, and
saturation, through HSV, stays in range on in-range inputs, so only brightness and contrast can bite).

Data: the first ``--images`` Fashion-MNIST test images, clean and under each corruption at ``--severity`` (seed 0),
rounded to 8 bits as the server receives them (dyntta.evaluate's ``quantise``). The enhancer's float output goes
straight to the recognizer, as in benchmarks/confidence_gate.py.

    heavy .venv/bin/python -m benchmarks.enhancer_clamps --results benchmarks/results/enhancer_clamps.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
from tqdm import tqdm

from benchmarks.provenance import Provenance
from dyntta.corruptions import NAMES, corrupt
from dyntta.data import load_dataset, to_float
from dyntta.enhancer import DynTTAEnhancer, load_enhancer
from dyntta.enhancer.ops import Op
from dyntta.evaluate.predictions import quantise
from dyntta.models import load_recognizer, read_checkpoint_meta, read_preprocess

CLEAN = "clean"
#: The ops whose published versions clamp their own outputs to [0, 1].
PUBLISHED_CLAMPED = ("brightness", "contrast", "gamma", "saturation")
DEFAULT_CONDITIONS = (CLEAN, "brightness", "contrast", "fog", "gaussian_noise", "frost")


def _clamped(fn: Op) -> Op:
    def op(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return fn(x, m).clamp(0.0, 1.0)

    return op


@contextmanager
def per_op_clamps(enhancer: DynTTAEnhancer, names: Iterable[str] = PUBLISHED_CLAMPED) -> Iterator[DynTTAEnhancer]:
    """Within the block, the ops ``names`` of this ``enhancer`` clamp their own outputs to [0, 1]; restored after.

    Only the instance's ``ops`` tuple is replaced (its forward reads ops from it), so the library's ``OPS``, other
    instances and the exported model keep the blend-only clamp.
    """
    wanted = set(names)
    unknown = wanted - {op.name for op in enhancer.ops}
    if unknown:
        raise ValueError(f"no such ops in the enhancer's bank: {sorted(unknown)}")
    original = enhancer.ops
    enhancer.ops = tuple(replace(op, fn=_clamped(op.fn)) if op.name in wanted else op for op in original)
    try:
        yield enhancer
    finally:
        enhancer.ops = original


@torch.no_grad()
def out_of_range(
    enhancer: DynTTAEnhancer, x: torch.Tensor, names: Iterable[str] = PUBLISHED_CLAMPED
) -> dict[str, torch.Tensor]:
    """Op name -> (B,) bool: whether that op leaves [0, 1] on an image at the magnitude the predictor gives it.
    Where none of them does, per-op clamps are the identity and the enhanced image is the same, bit for bit."""
    wanted = set(names)
    _, magnitudes = enhancer.blend_parameters(x)
    zero = torch.zeros_like(magnitudes[:, 0])
    flags = {}
    for op in enhancer.ops:
        if op.name in wanted:
            m = magnitudes[:, enhancer.param_slot[op.name]] if op.parameterised else zero
            y = op.fn(x, m)
            flags[op.name] = ((y < 0.0) | (y > 1.0)).flatten(1).any(1)
    return flags


@dataclass(frozen=True)
class Predictions:
    """Per image of one condition: top-1 class without and with per-op clamps, how much the clamps change the
    enhanced image, and which clamped ops leave [0, 1] on it."""

    blend: torch.Tensor  # (N,) int64, blend-only clamp (the committed behaviour)
    per_op: torch.Tensor  # (N,) int64, the published per-op clamps
    change: torch.Tensor  # (N,) mean |enhanced per-op - enhanced blend-only|, in 8-bit levels
    out_of_range: dict[str, torch.Tensor]  # op -> (N,) bool, see :func:`out_of_range`


@dataclass(frozen=True)
class Row:
    condition: str
    accuracy_blend_clamp: float  # top-1 %, committed behaviour
    accuracy_per_op_clamps: float  # top-1 %, published clamps on the same weights
    agreement: float  # % of images with the same top-1 class either way
    mean_change: float  # mean |change| of the enhanced image, 8-bit levels
    out_of_range: float  # % of images on which one of the clamped ops leaves [0, 1]
    out_of_range_by_op: dict[str, float]  # the same, op by op


@torch.no_grad()
def predict(recognizer: torch.nn.Module, enhancer: DynTTAEnhancer, x: torch.Tensor, *, batch: int = 250) -> Predictions:
    """Top-1 predictions of enhancer + recognizer on float images ``x``, both ways, and what the clamps touch."""
    blend: list[torch.Tensor] = []
    per_op: list[torch.Tensor] = []
    change: list[torch.Tensor] = []
    flags: list[dict[str, torch.Tensor]] = []
    for b in x.split(batch):
        plain = enhancer(b)
        with per_op_clamps(enhancer):
            clamped = enhancer(b)
        blend.append(recognizer(plain).argmax(1))
        per_op.append(recognizer(clamped).argmax(1))
        change.append(255 * (clamped - plain).abs().flatten(1).mean(1))
        flags.append(out_of_range(enhancer, b))
    return Predictions(
        torch.cat(blend),
        torch.cat(per_op),
        torch.cat(change),
        {name: torch.cat([f[name] for f in flags]) for name in flags[0]},
    )


def condition_images(images: torch.Tensor, condition: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """uint8 images -> float images under ``condition`` (``clean`` or a corruption), rounded to 8 bits."""
    x = to_float(images)
    return x if condition == CLEAN else to_float(quantise(corrupt(x, condition, severity, seed=seed)))


def percent(hits: torch.Tensor) -> float:
    return 100 * hits.float().mean().item()


def compare(
    recognizer: torch.nn.Module,
    enhancer: DynTTAEnhancer,
    images: torch.Tensor,
    labels: torch.Tensor,
    conditions: Sequence[str],
    severity: int,
    *,
    seed: int = 0,
    batch: int = 250,
    progress: bool = False,
) -> list[Row]:
    """One :class:`Row` per condition for uint8 ``images`` (N, 3, S, S) with ``labels``."""
    rows = []
    for name in tqdm(conditions, desc="conditions", file=sys.stderr, disable=not progress):
        p = predict(recognizer, enhancer, condition_images(images, name, severity, seed=seed), batch=batch)
        flags = torch.stack(list(p.out_of_range.values()))
        rows.append(
            Row(
                condition=name,
                accuracy_blend_clamp=percent(p.blend == labels),
                accuracy_per_op_clamps=percent(p.per_op == labels),
                agreement=percent(p.blend == p.per_op),
                mean_change=p.change.mean().item(),
                out_of_range=percent(flags.any(0)),
                out_of_range_by_op={op: percent(f) for op, f in p.out_of_range.items()},
            )
        )
    return rows


def table(rows: Sequence[Row]) -> str:
    head = ("condition", "blend-only %", "per-op %", "agreement %", "|change| /255", "out of [0,1] %")
    lines = [f"{head[0]:<16}" + "".join(f"{h:>15}" for h in head[1:])]
    for r in rows:
        accuracies = (r.accuracy_blend_clamp, r.accuracy_per_op_clamps, r.agreement)
        lines.append(
            f"{r.condition:<16}"
            + "".join(f"{v:>15.1f}" for v in accuracies)
            + f"{r.mean_change:>15.2f}{r.out_of_range:>15.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.enhancer_clamps", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--images", type=int, default=500, help="the first N test images")
    parser.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    parser.add_argument(
        "--corruptions", nargs="+", default=list(DEFAULT_CONDITIONS), choices=[CLEAN, *NAMES], metavar="NAME"
    )
    parser.add_argument("--seed", type=int, default=0, help="keys the corruptions' random draws")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--results", default=None, help="JSON results file (none: printed only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    provenance = Provenance.start("benchmarks.enhancer_clamps", argv)
    recognizer = load_recognizer(args.recognizer).eval()
    enhancer = load_enhancer(args.enhancer).eval()
    test = load_dataset(
        "fashion-mnist",
        "test",
        image_size=recognizer.config.input_size,
        preprocess=read_preprocess(args.recognizer),
    ).subset(torch.arange(args.images))
    rows = compare(
        recognizer,
        enhancer,
        test.images,
        test.labels,
        args.corruptions,
        args.severity,
        seed=args.seed,
        batch=args.batch,
        progress=True,
    )
    body = {
        "images": args.images,
        "severity": args.severity,
        "seed": args.seed,
        "threads": args.threads,
        "clamped_ops": list(PUBLISHED_CLAMPED),
        # which weights were measured: the committed checkpoints change over time
        "models": {
            role: {"path": path, "created": read_checkpoint_meta(path).get("created")}
            for role, path in (("recognizer", args.recognizer), ("enhancer", args.enhancer))
        },
        "rows": [asdict(r) for r in rows],
    }
    result = provenance.write(args.results, body, echo=False)
    print(table(rows))
    print(f"load average at start {result['load_average_at_start']}, at end {result['load_average_at_end']}")


if __name__ == "__main__":
    main()
