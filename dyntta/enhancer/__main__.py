"""``python -m dyntta.enhancer estimate-policy``: rank the enhancer's ops on a shifted set, write a policy.

Example (the 4 held-out corruptions at severity 5, as DynTTA suggests)::

    python -m dyntta.enhancer estimate-policy --enhancer checkpoints/fashion-mnist/enhancer \\
        --data fashion-mnist --corruptions speckle_noise gaussian_blur spatter saturate --severity 5 \\
        --out runs/policy.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from dyntta.corruptions import EXTRA_NAMES, corrupt
from dyntta.data import DatasetNotFoundError, load_dataset, to_float
from dyntta.enhancer.checkpoint import load_enhancer
from dyntta.enhancer.policy import make_policy, mean_blend_weights, save_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dyntta.enhancer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    est = commands.add_parser("estimate-policy", help="estimate a training-time augmentation policy")
    est.add_argument("--enhancer", required=True)
    est.add_argument("--data", default="fashion-mnist")
    est.add_argument("--data-dir", default=None)
    est.add_argument("--split", default="train", choices=["train", "test"])
    est.add_argument("--limit", type=int, default=2000, help="images per corruption")
    est.add_argument("--corruptions", nargs="+", default=list(EXTRA_NAMES))
    est.add_argument("--severity", type=int, default=5)
    est.add_argument("--top-k", type=int, default=4)
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--out", required=True, help="policy JSON file to write")
    args = parser.parse_args(argv)
    try:
        enhancer = load_enhancer(args.enhancer)
        data = load_dataset(args.data, args.split, image_size=enhancer.config.input_size, root=args.data_dir)
        clean = to_float(data.images[: args.limit])
        shifted = torch.cat(
            [corrupt(clean, name, args.severity, seed=args.seed) for name in tqdm(args.corruptions, desc="corrupting")]
        )
        weights = mean_blend_weights(enhancer, shifted)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    source = {
        "enhancer": args.enhancer,
        "data": args.data,
        "split": args.split,
        "images_per_corruption": len(clean),
        "corruptions": args.corruptions,
        "severity": args.severity,
        "seed": args.seed,
    }
    policy = make_policy(weights, args.top_k, source)
    save_policy(policy, args.out)
    print(json.dumps({"policy": args.out, "ops": policy["ops"], "top": policy["ranking"][: args.top_k + 2]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
