"""Does a fitted output warp respond to geometric shifts? (issue 13 section 3; ``--warp``)

For an enhancer fitted with ``--warp``, the warp parameters its predictor outputs on test images shifted by
``rotate``, ``scale`` and ``translate`` of :mod:`dyntta.shifts` at each severity, against those on the clean
images: if the warp learned to undo a shift, the predicted rotation grows with the applied angle, and so on.

    nice uv run python -m benchmarks.warp_response --enhancer runs/novel-families-warp/enhancer-all-novel \\
        --results benchmarks/results/warp_response.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch

from benchmarks.provenance import Provenance
from dyntta.data import load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.enhancer.warp import MAX_ANGLE, MAX_TRANSLATION, WARP_PARAMETERS
from dyntta.shifts import shift

SHIFTS = ("rotate", "scale", "translate")


def warp_summary(raw: torch.Tensor) -> dict[str, float]:
    """Mean magnitude over images of the predicted rotation (degrees), log2 scale per axis and translation
    (fraction of the side), from the raw warp outputs (B, 6)."""
    squashed = torch.tanh(raw)
    return {
        "abs_angle_deg": round(math.degrees(MAX_ANGLE) * squashed[:, 0].abs().mean().item(), 3),
        "abs_log2_scale": round(squashed[:, 2:4].abs().mean().item(), 4),
        "abs_translation": round(MAX_TRANSLATION / 2 * squashed[:, 4:6].abs().mean().item(), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enhancer", required=True, help="an enhancer checkpoint fitted with --warp")
    parser.add_argument("--images", type=int, default=200, help="first N Fashion-MNIST test images")
    parser.add_argument("--seed", type=int, default=0, help="keys the shifts' random draws")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=None, help="JSON results file (none: printed only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    provenance = Provenance.start("benchmarks.warp_response", argv)
    enhancer = load_enhancer(args.enhancer).eval()
    if not enhancer.num_warp:
        parser.error(f"{args.enhancer} has no output warp (fitted without --warp)")
    clean = to_float(load_dataset("fashion-mnist", "test", image_size=enhancer.config.input_size).images)
    clean = clean[: args.images]
    indices = torch.arange(len(clean))

    def predicted(images: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            _, magnitudes = enhancer.blend_parameters(images)
        return warp_summary(magnitudes[:, -WARP_PARAMETERS:])

    rows = {"clean": predicted(clean)}
    for name in SHIFTS:
        for severity in range(1, 6):
            rows[f"{name}/{severity}"] = predicted(shift(clean, name, severity, seed=args.seed, indices=indices))
    for condition, row in rows.items():
        print(f"{condition:12s} " + "  ".join(f"{k} {v:8.3f}" for k, v in row.items()))
    provenance.write(args.results, {"enhancer": args.enhancer, "images": args.images, "rows": rows}, echo=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
