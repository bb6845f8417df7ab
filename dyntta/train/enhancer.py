"""``python -m dyntta.train enhancer``: fit a DynTTA enhancer through a frozen recognizer.

The recognizer never changes; only the enhancer's predictor, U-Net and head learn, from the recognizer's
cross-entropy on enhanced images. The same one training loop as recognizers is used: the trainable model
is ``recognizer(enhancer(x))`` with the recognizer frozen in eval mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dyntta import distributed
from dyntta.data import LabelledImages, load_dataset, split_validation
from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, load_enhancer, save_enhancer
from dyntta.models import Recognizer, load_recognizer, read_checkpoint_meta
from dyntta.robust import TrainingStrategy
from dyntta.train.augment import standard_augmentation
from dyntta.train.corruption_augment import RandomAugMix, RandomCorruption, corrupted_copy
from dyntta.train.loop import LoopConfig, check_training_set, evaluate_accuracy, fit, pick_device


class EnhancedRecognizer(nn.Module):
    """``recognizer(enhancer(x))`` with the recognizer frozen: no gradients, BatchNorm always in eval."""

    def __init__(self, enhancer: nn.Module, recognizer: Recognizer) -> None:
        super().__init__()
        self.enhancer = enhancer
        self.recognizer = recognizer.eval()
        for p in self.recognizer.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> EnhancedRecognizer:
        super().train(mode)
        self.recognizer.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.recognizer(self.enhancer(pixels))


@dataclass
class EnhancerTrainConfig:
    recognizer: str
    out: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    blind: bool = False
    corruption_probability: float = 15 / 16
    train_subset: int | None = None
    val_fraction: float = 0.1
    val_size: int = 2000
    init: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    weights_dtype: str = "float32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recognizer", required=True, help="frozen recognizer checkpoint directory")
    parser.add_argument("--out", required=True, help="output enhancer checkpoint directory")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | cifar100 | imagefolder")
    parser.add_argument("--data-dir", default=None, help="where the data set's files are (overrides defaults)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="global batch: under torchrun each of the N ranks takes batch-size / N images per step",
    )
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="AdamW learning rate for the global batch (cosine schedule)"
    )
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument(
        "--blind",
        action="store_true",
        help="train on AugMix augmentations of clean images only (no benchmark corruption)",
    )
    parser.add_argument(
        "--corruption-probability", type=float, default=15 / 16, help="share of training images corrupted (else clean)"
    )
    parser.add_argument("--train-subset", type=int, default=None, help="use only N training images")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="held-out part of train for validation (at most --val-size images)",
    )
    parser.add_argument(
        "--val-size", type=int, default=2000, help="cap on the held-out validation images (0: no validation)"
    )
    parser.add_argument("--init", default=None, metavar="CKPT", help="start from this enhancer checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--weights-dtype",
        default="float32",
        choices=["float32", "float16"],
        help="dtype of the saved weights (float16 halves committed files)",
    )


def run(args: argparse.Namespace) -> dict:
    config = EnhancerTrainConfig(
        **{k: v for k, v in vars(args).items() if k in EnhancerTrainConfig.__dataclass_fields__}
    )
    if config.threads:
        torch.set_num_threads(config.threads)
    world = distributed.current()
    if not 0 <= config.val_fraction < 1 or config.val_size < 0:
        raise ValueError(
            f"need 0 <= --val-fraction < 1 and --val-size >= 0, got {config.val_fraction}, {config.val_size}"
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    recognizer = load_recognizer(config.recognizer)
    size = recognizer.config.input_size
    full_train = load_dataset(config.data, "train", image_size=size, root=config.data_dir)
    if full_train.classes != recognizer.config.classes:
        raise ValueError(f"data set classes {full_train.classes[:5]}... do not match the recognizer's")
    n_val = validation_size(len(full_train), config.val_fraction, config.val_size)
    train, val = split_validation(full_train, n_val / len(full_train), config.seed)
    if config.train_subset:
        train = train.subset(torch.arange(min(config.train_subset, len(train))))
    check_training_set(train)
    val_corrupted = corrupted_copy(val, config.corruption_probability, seed=config.seed + 1)

    enhancer = load_enhancer(config.init) if config.init else DynTTAEnhancer(EnhancerConfig(input_size=size))
    model = EnhancedRecognizer(enhancer, recognizer)
    shift = RandomAugMix() if config.blind else RandomCorruption(config.corruption_probability)
    augment = nn.Sequential(standard_augmentation(size), shift)
    loop = LoopConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer="adamw",
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_epochs=0.2,
        seed=config.seed,
        device=config.device,
    )
    device = pick_device(config.device)
    if world.is_main:
        print(
            f"training a DynTTA enhancer ({enhancer.num_parameters() / 1e6:.3f} M parameters) for "
            f"{config.recognizer} on {len(train)} {config.data} images, validating on {len(val)} "
            f"({'blind: AugMix' if config.blind else f'corrupted with p={config.corruption_probability:.3f}'}), "
            f"device {device}, world size {world.size}",
            file=sys.stderr,
        )
    started = time.perf_counter()
    trained, history = fit(model, TrainingStrategy(), train, val_corrupted, loop, out, augment=augment)
    train_seconds = time.perf_counter() - started
    if not world.is_main:
        return {}  # rank 0 alone evaluates and writes the checkpoint

    trained.eval()

    def accuracy(model: nn.Module, data: LabelledImages) -> float | None:  # None: no validation split
        return round(evaluate_accuracy(model, data, device), 4) if len(data) else None

    metrics = {
        "val_corrupted_accuracy_recognizer_alone": accuracy(trained.recognizer, val_corrupted),
        "val_corrupted_accuracy_enhanced": accuracy(trained, val_corrupted),
        "val_clean_accuracy_recognizer_alone": accuracy(trained.recognizer, val),
        "val_clean_accuracy_enhanced": accuracy(trained, val),
        "train_seconds": round(train_seconds, 1),
        "history": history,
    }
    recipe = {
        "command": "python -m dyntta.train enhancer " + " ".join(sys.argv[2:]),
        **asdict(config),
        "recognizer_meta": {
            k: read_checkpoint_meta(config.recognizer).get(k) for k in ("format", "created", "num_parameters")
        },
        "loss": "cross-entropy of the frozen recognizer on enhanced images",
        "shift": "AugMix (torchvision, severity 5)"
        if config.blind
        else "one of the 15 benchmark corruptions, severity U{1..5}, with the given probability",
        "optimizer": "AdamW, cosine schedule",
        "device": str(device),
        "world_size": world.size,
        "per_rank_batch": config.batch_size // world.size,
    }
    save_enhancer(trained.enhancer.cpu(), out, recipe=recipe, metrics=metrics, weights_dtype=config.weights_dtype)
    print(json.dumps({"checkpoint": str(out), **{k: v for k, v in metrics.items() if k != "history"}}))
    return metrics


def validation_size(n: int, fraction: float, cap: int) -> int:
    """Held-out images: ``fraction`` of the training images, at most ``cap`` (2,000 of Fashion-MNIST's
    60,000 by default; 180 of a 1,800-image folder)."""
    return min(cap, int(round(n * fraction)))
