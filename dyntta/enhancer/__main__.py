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
from collections.abc import Sequence

from dyntta.cli import ArgumentParser, run
from dyntta.contract import EXTRA_CORRUPTIONS, SEVERITIES


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m dyntta.enhancer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    est = commands.add_parser(
        "estimate-policy", help="estimate a training-time augmentation policy", description=__doc__
    )
    est.add_argument("--enhancer", required=True, help="enhancer checkpoint directory")
    est.add_argument("--data", default="fashion-mnist", help="data set whose images are corrupted")
    est.add_argument("--data-dir", default=None, help="where the data set's files are (default: its usual place)")
    est.add_argument("--split", default="train", choices=["train", "test"], help="data-set split")
    est.add_argument("--limit", type=int, default=2000, help="images per corruption")
    est.add_argument(
        "--corruptions", nargs="+", default=list(EXTRA_CORRUPTIONS), help="the shift the policy is estimated on"
    )
    est.add_argument("--severity", type=int, default=5, choices=SEVERITIES, help="corruption severity")
    est.add_argument("--top-k", type=int, default=4, help="ops kept in the policy")
    est.add_argument("--seed", type=int, default=0, help="corruption seed")
    est.add_argument("--out", required=True, help="policy JSON file to write")
    return parser


def estimate_policy(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from dyntta.corruptions import corrupt
    from dyntta.data import load_dataset, to_float
    from dyntta.enhancer.checkpoint import load_enhancer
    from dyntta.enhancer.policy import make_policy, mean_blend_weights, save_policy

    enhancer = load_enhancer(args.enhancer)
    data = load_dataset(args.data, args.split, image_size=enhancer.config.input_size, root=args.data_dir)
    clean = to_float(data.images[: args.limit])
    shifted = torch.cat(
        [corrupt(clean, name, args.severity, seed=args.seed) for name in tqdm(args.corruptions, desc="corrupting")]
    )
    weights = mean_blend_weights(enhancer, shifted)
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


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), estimate_policy, argv)


if __name__ == "__main__":
    sys.exit(main())
