"""``python -m dyntta.train recognizer``: fit a classifier on a data set and save a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dyntta import distributed
from dyntta.data import CENTER_CROP, Preprocess, load_dataset, split_validation, to_float
from dyntta.data.preprocess import INTERPOLATIONS
from dyntta.models import Recognizer, create_recognizer, load_recognizer, read_preprocess, save_recognizer
from dyntta.robust import STRATEGIES, create_strategy, parse_method_args
from dyntta.train.augment import standard_augmentation
from dyntta.train.loop import LoopConfig, check_training_set, evaluate_accuracy, fit, pick_device


@dataclass
class RecognizerTrainConfig:
    data: str
    arch: str
    epochs: int
    out: str
    data_dir: str | None = None
    image_size: int = 32
    method: str = "erm"
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    train_subset: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    weights_dtype: str = "float32"
    augment_policy: str | None = None
    method_args: list[str] | None = None
    init: str | None = None
    warmup_epochs: float | None = None
    schedule: str | None = None
    small_input_stem: bool = True
    sync_bn: bool = False
    preprocess: str | None = None
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def policy(self) -> Preprocess:
        """The preprocessing the checkpoint records: the flags, else the --init checkpoint's, else
        center-crop (the shorter side whole; for the square built-in data sets the same pixels as resize)."""
        if self.preprocess is None:
            if self.init:
                return read_preprocess(self.init)
            return Preprocess(CENTER_CROP.mode, self.crop_pct, self.interpolation)  # type: ignore[arg-type]
        return Preprocess(self.preprocess, self.crop_pct, self.interpolation)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | cifar100 | imagefolder")
    parser.add_argument("--data-dir", default=None, help="where the data set's files are (overrides defaults)")
    parser.add_argument("--arch", default="resnet18_half", help="any timm architecture name")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs")
    parser.add_argument("--out", required=True, help="output checkpoint directory")
    parser.add_argument("--image-size", type=int, default=32, help="model input side in pixels")
    parser.add_argument(
        "--preprocess",
        default=None,
        choices=["resize", "center-crop", "letterbox"],
        help="how a non-square image becomes image-size x image-size, in training, evaluation and serving "
        "(recorded in the checkpoint): resize squashes it, center-crop keeps the centred square of "
        "--crop-pct of the shorter side, letterbox pads to a square with black; default center-crop "
        "(with --init: that checkpoint's policy)",
    )
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=1.0,
        help="center-crop: fraction of the shorter side kept (timm's evaluation value is 0.875)",
    )
    parser.add_argument(
        "--interpolation", default="bilinear", choices=INTERPOLATIONS, help="resampling to image-size (Pillow)"
    )
    parser.add_argument("--method", default="erm", choices=sorted(STRATEGIES), help="training method")
    parser.add_argument(
        "--method-args",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="method hyper-parameters, e.g. sigma=0.1 micro_batches=8 (damp); an unknown key "
        "lists the method's parameters and defaults",
    )
    parser.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this recognizer checkpoint's weights (e.g. AdvBN fine-tuning)",
    )
    parser.add_argument(
        "--no-small-input-stem",
        dest="small_input_stem",
        action="store_false",
        help="keep the architecture's strided stem at small inputs (faster, coarser)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="global batch: under torchrun each of the N ranks takes batch-size / N images per step",
    )
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd: Nesterov momentum")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for the global batch; default: 0.1 (sgd) or 1e-3 (adamw) per 128 images",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on CUDA: SyncBatchNorm (batch statistics over all ranks); refused on CPU",
    )
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="optimizer weight decay")
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear learning-rate warm-up; default 1 epoch, none for a fine-tune (--init)",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        choices=["cosine", "step", "constant"],
        help="learning-rate shape after the warm-up; default the method's (cosine; AdvBN: step x0.1 at half)",
    )
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out part of train for validation")
    parser.add_argument("--train-subset", type=int, default=None, help="use only N training images (smoke runs)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--augment-policy",
        default=None,
        metavar="FILE",
        help="augmentation policy JSON from 'python -m dyntta.enhancer estimate-policy'",
    )
    parser.add_argument(
        "--weights-dtype",
        default="float32",
        choices=["float32", "float16"],
        help="dtype of the saved weights (float16 halves committed files)",
    )


def run(args: argparse.Namespace) -> dict:
    fields = RecognizerTrainConfig.__dataclass_fields__
    config = RecognizerTrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if config.threads:
        torch.set_num_threads(config.threads)
    world = distributed.current()
    if not 0 <= config.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.sync_bn and pick_device(config.device).type != "cuda":
        raise ValueError(
            "--sync-bn needs CUDA (nccl): torch's SyncBatchNorm does not run on CPU modules. Without it "
            "BatchNorm statistics are per rank (running statistics averaged over ranks at every step)"
        )
    policy = config.policy()  # ValueError (bad --crop-pct): a usage error for the caller
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    full_train, test = (
        load_dataset(config.data, split, image_size=config.image_size, root=config.data_dir, preprocess=policy)
        for split in ("train", "test")
    )
    train, val = split_validation(full_train, config.val_fraction, config.seed)
    if config.train_subset:
        train = train.subset(torch.arange(min(config.train_subset, len(train))))
    check_training_set(train)
    mean, std = channel_statistics(train.images)
    model = create_recognizer(
        config.arch,
        train.classes,
        input_size=config.image_size,
        mean=mean,
        std=std,
        small_input=None if config.small_input_stem else False,
        preprocess=policy,
    )
    if config.init:
        load_initial_weights(model, config.init)
    if config.sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state-dict keys as BatchNorm
    strategy = create_strategy(
        config.method, label_smoothing=config.label_smoothing, **parse_method_args(config.method_args)
    )
    # A method may bring its paper's fine-tuning learning rate and schedule (AdvBN: 1e-3, step decay).
    default_lr = strategy.default_lr or (0.1 if config.optimizer == "sgd" else 1e-3) * config.batch_size / 128
    lr = config.lr or default_lr
    warmup = config.warmup_epochs if config.warmup_epochs is not None else (0.0 if config.init else 1.0)
    schedule = config.schedule or strategy.schedule
    loop = LoopConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=lr,
        weight_decay=config.weight_decay,
        warmup_epochs=warmup,
        schedule=schedule,
        seed=config.seed,
        device=config.device,
        rounds=strategy.rounds,
    )
    if world.is_main:
        print(
            f"training {config.arch} ({model.num_parameters() / 1e6:.2f} M parameters) with {strategy.name} on "
            f"{len(train)} {config.data} images, validating on {len(val)}, device {pick_device(config.device)}, "
            f"world size {world.size}",
            file=sys.stderr,
        )
    started = time.perf_counter()
    augment = standard_augmentation(config.image_size)
    if config.augment_policy:  # an estimated policy (python -m dyntta.enhancer estimate-policy) on top
        from dyntta.enhancer.policy import PolicyAugment, load_policy

        augment = torch.nn.Sequential(augment, PolicyAugment(load_policy(config.augment_policy), config.image_size))
    trained, history = fit(model, strategy, train, val, loop, out, augment=augment)
    train_seconds = time.perf_counter() - started
    if not world.is_main:
        return {}  # rank 0 alone writes the checkpoint and evaluates it
    device = pick_device(config.device)
    final = strategy.inference_model(trained).cpu()
    assert isinstance(final, Recognizer), "a strategy's inference model is a plain recognizer"
    recipe = {
        "command": "python -m dyntta.train recognizer " + " ".join(sys.argv[2:]),
        **asdict(config),
        "lr": lr,
        "strategy": strategy.describe(),
        "augmentation": "random crop (pad size/8) + hflip",
        "schedule": f"{warmup:g} warm-up epoch(s), then {schedule} per step",
        "device": str(device),
        "world_size": world.size,
        "per_rank_batch": config.batch_size // world.size,
    }
    save_recognizer(final, out, recipe=recipe, weights_dtype=config.weights_dtype)
    recipe["artifacts"] = strategy.save_artifacts(trained, out)
    # The reported accuracy is that of the saved artifact, reloaded (weights rounded as stored).
    saved = load_recognizer(out).to(device)
    test_acc = evaluate_accuracy(strategy.eval_mode(saved), test, device)
    metrics = {
        "test_accuracy": round(test_acc, 4),
        "test_images": len(test),
        "val_accuracy": history[-1].get("val_accuracy") if history else None,
        "train_seconds": round(train_seconds, 1),
        "history": history,
    }
    save_recognizer(final, out, recipe=recipe, metrics=metrics, weights_dtype=config.weights_dtype)
    print(
        json.dumps(
            {
                "checkpoint": str(out),
                "test_accuracy": metrics["test_accuracy"],
                "train_seconds": metrics["train_seconds"],
            }
        )
    )
    return metrics


def load_initial_weights(model: Recognizer, directory: str) -> None:
    """Copy a saved recognizer's weights into ``model``; the architecture and classes must match."""
    source = load_recognizer(directory)
    if (source.config.arch, source.config.classes) != (model.config.arch, model.config.classes):
        raise ValueError(
            f"--init {directory} is a {source.config.arch} over {len(source.config.classes)} "
            f"classes; this run builds a {model.config.arch} over {len(model.config.classes)}"
        )
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as error:
        raise ValueError(
            f"--init {directory} does not fit this model (stem or input size differ?): {str(error).splitlines()[0]}"
        ) from None


def channel_statistics(images: torch.Tensor, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of [0, 1] pixels over (up to) the first ``max_images`` training images."""
    sample = to_float(images[:max_images])
    mean = sample.mean(dim=(0, 2, 3)).tolist()
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return tuple(round(m, 4) for m in mean), tuple(round(s, 4) for s in std)


__all__ = ["add_arguments", "channel_statistics", "load_initial_weights", "run"]
