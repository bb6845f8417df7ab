"""Enhancers compared on the enhancer trainer's own validation split, in front of one recognizer.

``python -m dyntta.train enhancer`` holds out ``--val-size`` (2,000) training images (split by ``--seed``) and
corrupts them once (``--corruption-probability`` 15/16 of them, seed + 1, the core corruptions); its
checkpoint records the fitted enhancer's accuracy there. This replays that split with the trainer's own
functions, so an enhancer fitted for another recognizer (or an older one) is judged on the same images as a
new fit, without touching the test split. Defaults are the trainer's; pass the same flags it was given.

    nice uv run python -m benchmarks.enhancer_validation --recognizer checkpoints/fashion-mnist/recognizer \\
        checkpoints/fashion-mnist/enhancer runs/default-damp/enhancer
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import torch

from benchmarks.provenance import Provenance
from dyntta.data import RESIZE, load_dataset
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer
from dyntta.train.enhancer import EnhancedRecognizer, EnhancerTrainConfig, training_corruptions
from dyntta.train.loop import evaluate_accuracy


@dataclass(frozen=True)
class Row:
    model: str
    corrupted: float
    clean: float


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.enhancer_validation", description=__doc__)
    parser.add_argument("enhancers", nargs="+", help="enhancer checkpoint directories")
    parser.add_argument("--recognizer", required=True, help="a dyntta recognizer checkpoint directory")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0, help="the trainer's --seed")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--corruption-probability", type=float, default=15 / 16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=None, help="also write the figures and provenance here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    provenance = Provenance.start("benchmarks.enhancer_validation", argv)

    # the trainer's own split and corrupted copy, from the flags it was given
    trainer = EnhancerTrainConfig(
        recognizer=args.recognizer,
        out="",
        data=args.data,
        seed=args.seed,
        val_fraction=args.val_fraction,
        val_size=args.val_size,
        corruption_probability=args.corruption_probability,
    )
    recognizer = load_recognizer(args.recognizer).eval()
    full = load_dataset(args.data, "train", image_size=recognizer.config.input_size, preprocess=RESIZE)
    _, val = trainer.validation_split(full)
    names = training_corruptions(trainer.train_corruptions, trainer.exclude_corruptions)
    corrupted = trainer.corrupted_validation(val, names)

    def measure(name: str, model: torch.nn.Module) -> Row:
        return Row(name, evaluate_accuracy(model, corrupted, "cpu"), evaluate_accuracy(model, val, "cpu"))

    rows = [measure("recognizer alone", recognizer)]
    for path in args.enhancers:
        model = EnhancedRecognizer(load_enhancer(path), recognizer).eval()
        rows.append(measure(path, model))
    print(f"validation: {len(val)} held-out training images (seed {args.seed}); accuracy in %")
    for row in rows:
        print(f"  {row.model:60s} corrupted {100 * row.corrupted:6.2f}   clean {100 * row.clean:6.2f}")
    provenance.write(args.results, {"recognizer": args.recognizer, "rows": [asdict(r) for r in rows]})
    return rows


if __name__ == "__main__":
    main()
