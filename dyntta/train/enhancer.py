"""``python -m dyntta.train enhancer``: fit a DynTTA enhancer through a frozen recognizer.

The recognizer never changes; only the enhancer's predictor, U-Net and head learn. The same one training
loop as recognizers is used: the trainable model is ``recognizer(enhancer(x))`` with the recognizer frozen
in eval mode.

The recognizer is any :mod:`dyntta.models.external` spec: a dyntta checkpoint, ``timm:ARCH`` or
``torchvision:ARCH`` with ``--recognizer-weights``, a TorchScript file or an ONNX file (converted with
onnx2torch, refused unless it matches onnxruntime on real images). Its normalisation is folded into the
frozen module, so the enhancer always sees ``to_model_input`` pixels / 255.

Two objectives:

- ``--labels dataset`` (default): the recognizer's cross-entropy against the data set's labels on
  enhanced corrupted images;
- ``--labels none`` (label-free, for images without labels: a plain folder, or an ImageFolder or data set
  whose labels are ignored): the recognizer's predictions on the clean image are the targets. With ``r``
  the frozen recognizer, ``e`` the enhancer, ``c`` a random corruption and ``T`` the temperature
  (:data:`DEFAULT_TEMPERATURE`), the loss is ``T^2 * KL(softmax(r(x) / T) || softmax(r(e(c(x))) / T))``,
  averaged over the batch (Hinton et al.'s distillation loss, the clean recognizer as teacher).

Either objective adds a do-no-harm term (``--clean-weight``, :data:`DEFAULT_CLEAN_WEIGHT` unless told): the
same KL between the recognizer's predictions on the clean image and on the enhanced clean image, so that the
enhancer leaves clean inputs alone (:class:`EnhancerObjective`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dyntta import distributed
from dyntta.contract import DatasetNotFoundError, find_images, resolve_conditions
from dyntta.data import RESIZE, LabelledImages, Preprocess, load_dataset, split_validation, to_float, to_model_input
from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, load_enhancer, save_enhancer
from dyntta.models import read_checkpoint_meta
from dyntta.models.external import (
    Kind,
    LoadedRecognizer,
    add_recognizer_arguments,
    load_external_recognizer,
    spec_from_args,
)
from dyntta.robust import TrainingStrategy
from dyntta.shifts import NOVEL_FAMILIES, NOVEL_SHIFTS
from dyntta.train.augment import AUGMENTATIONS, AUTO_SAMPLE, choose_augmentation, geometric_augmentation
from dyntta.train.corruption_augment import corrupted_copy, training_shift
from dyntta.train.loop import (
    MIN_TRAIN_IMAGES,
    LoopConfig,
    check_training_set,
    evaluate_accuracy,
    fit,
    pick_device,
)

LABELS = ("dataset", "none")
#: Label-free fitting's softmax temperature (``--temperature``).
DEFAULT_TEMPERATURE = 1.0
#: The do-no-harm weight (``--clean-weight``) of the committed default enhancer: on Fashion-MNIST it took the
#: clean gap on all 10,000 test images from -0.39 to -0.21 points and raised the 15 x 5 mean (docs/RESULTS.md).
DEFAULT_CLEAN_WEIGHT = 1.0
#: Labels of images whose class nobody gave (label-free training images).
UNKNOWN = -1


class EnhancedRecognizer(nn.Module):
    """``recognizer(enhancer(x))`` with the recognizer frozen: no gradients, BatchNorm always in eval."""

    enhancer: nn.Module
    recognizer: nn.Module

    def __init__(self, enhancer: nn.Module, recognizer: nn.Module) -> None:
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
        logits: torch.Tensor = self.recognizer(self.enhancer(pixels))
        return logits


def _soft_kl(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(targets || softmax(logits / T))``, batch mean (``targets`` already softened)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, dim=1), targets, reduction="batchmean") * t * t


class EnhancerObjective(TrainingStrategy):
    """What the enhancer minimises on each batch of clean (geometrically augmented) training images ``x``:

    - on the shifted copy ``shift(x)`` (a corruption, or AugMix): the recognizer's cross-entropy against the
      labels, or label-free ``T^2 * KL(softmax(r(x) / T) || softmax(r(e(shift(x))) / T))``, the frozen
      recognizer's softened prediction on the clean image as target;
    - with ``clean_weight`` > 0, a do-no-harm term on the clean image itself:
      ``clean_weight * T^2 * KL(softmax(r(x) / T) || softmax(r(e(x)) / T))``: where there is nothing to
      restore, the enhancer must leave the recognizer's prediction as it was (costs one more enhancer and
      recognizer pass per step);
    - with ``warp_alignment`` > 0 (an enhancer with an output warp), ``warp_alignment * MSE(w(shift(x)), x)``,
      ``w`` the warp the predictor picks for the shifted image applied to it: the recognizer's loss alone
      left the warp at the identity (docs/RESULTS.md), while the pixels say directly which way a rotated or
      zoomed image must turn to meet its clean original. Costs one more predictor pass per step (whose
      BatchNorm statistics then also see the shifted batch twice, as the do-no-harm term's pass does).
    """

    name = "enhancer-objective"

    def __init__(
        self,
        shift: nn.Module,
        labelled: bool,
        temperature: float = DEFAULT_TEMPERATURE,
        clean_weight: float = 0.0,
        warp_alignment: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {temperature}")
        if clean_weight < 0 or warp_alignment < 0:
            raise ValueError(f"--clean-weight and --warp-alignment must be >= 0, got {clean_weight}, {warp_alignment}")
        self.shift = shift
        self.labelled = labelled
        self.temperature = temperature
        self.clean_weight = clean_weight
        self.warp_alignment = warp_alignment

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(model, EnhancedRecognizer):
            raise TypeError("the enhancer objective needs the frozen recognizer of an EnhancedRecognizer")
        needs_targets = not self.labelled or self.clean_weight > 0
        targets = None
        if needs_targets:
            with torch.no_grad():
                targets = F.softmax(model.recognizer(images) / self.temperature, dim=1)
        shifted = self.shift(images)
        logits = model(shifted)
        if self.labelled:
            loss = F.cross_entropy(logits, labels)
        else:
            assert targets is not None
            loss = _soft_kl(logits, targets, self.temperature)
        if self.clean_weight > 0:
            assert targets is not None
            loss = loss + self.clean_weight * _soft_kl(model(images), targets, self.temperature)
        if self.warp_alignment > 0:
            if not isinstance(model.enhancer, DynTTAEnhancer):
                raise TypeError(f"--warp-alignment needs a DynTTA enhancer, not a {type(model.enhancer).__name__}")
            loss = loss + self.warp_alignment * F.mse_loss(model.enhancer.warp_input(shifted), images)
        return loss

    def describe(self) -> dict[str, object]:
        return {
            "method": self.name,
            "labels": "dataset" if self.labelled else "none",
            "temperature": self.temperature,
            "clean_weight": self.clean_weight,
            "warp_alignment": self.warp_alignment,
        }


@dataclass
class EnhancerTrainConfig:
    recognizer: str
    out: str
    data: str = "fashion-mnist"
    data_dir: str | None = None
    labels: str = "dataset"
    temperature: float = DEFAULT_TEMPERATURE
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    blind: bool = False
    augmix_probability: float = 0.0
    compose_probability: float = 0.0
    train_corruptions: tuple[str, ...] = ("core",)
    exclude_corruptions: tuple[str, ...] = ()
    train_shifts: tuple[str, ...] = ()
    clean_weight: float = DEFAULT_CLEAN_WEIGHT
    augment: str = "auto"
    corruption_probability: float = 15 / 16
    train_subset: int | None = None
    val_fraction: float = 0.1
    val_size: int = 2000
    init: str | None = None
    warp: bool = False
    unet_width: int | None = None
    warp_alignment: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    weights_dtype: str = "float32"

    def check(self) -> None:
        """Refuse contradictory or out-of-range flags before any data or model is loaded."""
        if not 0 <= self.val_fraction < 1 or self.val_size < 0:
            raise ValueError(
                f"need 0 <= --val-fraction < 1 and --val-size >= 0, got {self.val_fraction}, {self.val_size}"
            )
        for flag, probability in (
            ("--augmix-probability", self.augmix_probability),
            ("--compose-probability", self.compose_probability),
        ):
            if not 0 <= probability <= 1:
                raise ValueError(f"{flag} must be in [0, 1], got {probability}")
        if self.blind and self.augmix_probability:
            raise ValueError("--augmix-probability mixes AugMix into the corruption recipe; --blind is AugMix only")
        if self.blind and self.compose_probability:
            raise ValueError("--compose-probability composes the corruption recipe's draws; --blind is AugMix only")
        for flag, given in (("--warp", self.warp), ("--unet-width", self.unet_width is not None)):
            if given and self.init:
                raise ValueError(f"{flag} builds a new enhancer; --init continues one as it was built (drop one)")
        if self.unet_width is not None and self.unet_width < 1:
            raise ValueError(f"--unet-width must be >= 1, got {self.unet_width}")

    def validation_split(self, data: LabelledImages) -> tuple[LabelledImages, LabelledImages]:
        """(training, validation): ``--val-fraction`` of ``data``, capped at ``--val-size``, split by ``--seed``."""
        held_out = validation_size(len(data), self.val_fraction, self.val_size)
        return split_validation(data, held_out / len(data), self.seed)

    def corrupted_validation(self, val: LabelledImages, names: Sequence[str]) -> LabelledImages:
        """Validation's one fixed corrupted copy (seed + 1: not the training draw of ``--seed``)."""
        return corrupted_copy(val, self.corruption_probability, seed=self.seed + 1, names=names)

    def enhancer_config(self, input_size: int) -> EnhancerConfig:
        """The architecture of a new enhancer (``--init`` continues its checkpoint's own)."""
        width = {} if self.unet_width is None else {"unet_width": self.unet_width}
        return EnhancerConfig(input_size=input_size, warp=self.warp, **width)

    def describe_loss(self) -> str:
        """The objective in words, for the checkpoint's recipe."""
        if self.labels == "none":
            loss = (
                f"T^2 * KL(softmax(r(x)/T) || softmax(r(e(c(x)))/T)), T={self.temperature:g}: the frozen "
                "recognizer's softened prediction on the clean image as target (no labels)"
            )
        else:
            loss = "cross-entropy of the frozen recognizer on enhanced images"
        if self.clean_weight > 0:
            loss += f"; plus {self.clean_weight:g} * T^2 * KL(softmax(r(x)/T) || softmax(r(e(x))/T)) on clean images"
        if self.warp_alignment > 0:
            loss += f"; plus {self.warp_alignment:g} * MSE(warp(c(x)), x), the output warp alone on the shifted image"
        return loss


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recognizer",
        required=True,
        help="the frozen recognizer: a dyntta checkpoint directory, timm:ARCH or torchvision:ARCH (with "
        "--recognizer-weights), a TorchScript file, or an ONNX file (onnx2torch, checked against onnxruntime)",
    )
    add_recognizer_arguments(parser)
    parser.add_argument("--out", required=True, help="output enhancer checkpoint directory")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | cifar100 | imagefolder")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where the data set's files are (overrides defaults); with --labels none and imagefolder, any "
        "folder of images (class sub-folders are ignored)",
    )
    parser.add_argument(
        "--labels",
        default="dataset",
        choices=LABELS,
        help="dataset: cross-entropy against the data set's labels; none: label-free, the loss is "
        "T^2 * KL(softmax(r(x)/T) || softmax(r(e(c(x)))/T)), the frozen recognizer r's softened prediction on "
        "the clean image x as target for the enhanced e(.) corrupted copy c(x)",
    )
    parser.add_argument(
        "--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature T of --labels none"
    )
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
        "--augmix-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="share of training images shifted by AugMix (torchvision, severity 5) instead of the corruption "
        "draw: shifts beyond the corruption list, for corruptions the enhancer never trains on (default 0)",
    )
    parser.add_argument(
        "--compose-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="share of training images that take two draws from the corruption list in sequence (each at its "
        "own severity) instead of one: a broader training distribution built from the same corruptions "
        "(default 0)",
    )
    parser.add_argument(
        "--train-corruptions",
        nargs="+",
        default=["core"],
        metavar="NAME|GROUP",
        help="corruptions the enhancer is fitted on: names or groups (noise, blur, weather, digital, extra, core = "
        "the 15 benchmark ones, all)",
    )
    parser.add_argument(
        "--exclude-corruptions",
        nargs="+",
        default=[],
        metavar="NAME|GROUP",
        help="left out of --train-corruptions, e.g. 'noise' to evaluate on a family the enhancer never saw",
    )
    parser.add_argument(
        "--train-shifts",
        nargs="+",
        default=[],
        metavar="NAME|FAMILY",
        help="novel shifts (dyntta.shifts) added to the training shifts: names or families (geometric, "
        "occlusion, appearance); each image draws uniformly over these and the corruptions (default: none)",
    )
    parser.add_argument(
        "--clean-weight",
        type=float,
        default=DEFAULT_CLEAN_WEIGHT,
        help="do-no-harm weight: adds clean-weight * T^2 * KL(softmax(r(x)/T) || softmax(r(e(x))/T)) on the clean "
        "training images, so the enhancer leaves the recognizer's clean predictions alone (default "
        f"{DEFAULT_CLEAN_WEIGHT:g}, the committed enhancer's recipe; 0: off, one pass per step cheaper)",
    )
    parser.add_argument(
        "--augment",
        default="auto",
        choices=AUGMENTATIONS,
        help="geometric augmentation of the training images before they are corrupted: random crop and flip, "
        "flip, none, or auto (the strongest the frozen recognizer is invariant to, measured on 128 training "
        "images: it keeps its top-1 on >= 90 %% of them)",
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
    parser.add_argument(
        "--warp",
        action="store_true",
        help="a new enhancer also predicts one affine warp of its whole output (rotation, shear, scale, "
        "translation; dyntta/enhancer/warp.py), for geometric shifts that a blend cannot undo",
    )
    parser.add_argument(
        "--unet-width",
        type=int,
        default=None,
        metavar="C",
        help=f"channels of a new enhancer's residual U-Net branch, its only free-form operation "
        f"(default {EnhancerConfig.unet_width}); wider can express shifts the fixed operations do not model",
    )
    parser.add_argument(
        "--warp-alignment",
        type=float,
        default=0.0,
        metavar="W",
        help="with an output warp: adds W * MSE(warp(shifted image), clean image), the warp alone judged by the "
        "pixels it should bring back (default 0: the recognizer's loss alone)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--weights-dtype",
        default="float32",
        choices=["float32", "float16"],
        help="dtype of the saved weights (float16 halves committed files)",
    )


# --- data ---------------------------------------------------------------------------------------------------


def unlabelled_images(config: EnhancerTrainConfig, size: int, policy: Preprocess | None = None) -> LabelledImages:
    """Label-free training images: every image under ``--data-dir`` for ``imagefolder`` (a plain folder or
    an ImageFolder, its ``train/`` part if there is one), else the named data set's train split; labels
    are :data:`UNKNOWN`. ``policy``: the recognizer's preprocessing (default plain resize)."""
    if config.data.replace("_", "-").lower() not in ("imagefolder", "image-folder"):
        data = load_dataset(config.data, "train", image_size=size, root=config.data_dir, preprocess=policy)
        return LabelledImages(data.name, "train", data.images, torch.full_like(data.labels, UNKNOWN), [])
    if config.data_dir is None:
        raise DatasetNotFoundError("--data imagefolder needs --data-dir DIR")
    root = Path(config.data_dir)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    files = find_images(root / "train" if (root / "train").is_dir() else root)
    if not files:
        raise DatasetNotFoundError(f"no images found under {root}")
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            images[i] = torch.from_numpy(to_model_input(image, size, policy or RESIZE)).permute(2, 0, 1)
    return LabelledImages(f"folder:{root}", "train", images, torch.full((len(files),), UNKNOWN), [])


def align_labels(data: LabelledImages, recognizer: LoadedRecognizer) -> LabelledImages:
    """``data`` with its labels in the recognizer's class order (matched by name when the recognizer names
    its classes; by position, counts checked, when it does not)."""
    own = recognizer.classes
    if own is None or own == data.classes:
        if len(data.classes) != recognizer.num_classes:
            raise ValueError(
                f"the data set has {len(data.classes)} classes but the recognizer {recognizer.num_classes} outputs"
            )
        return data
    if sorted(own) != sorted(data.classes):
        raise ValueError(f"data set classes {data.classes[:5]}... do not match the recognizer's {own[:5]}...")
    order = torch.tensor([own.index(name) for name in data.classes])
    return LabelledImages(data.name, data.split, data.images, order[data.labels], list(own))


@torch.no_grad()
def predicted_labels(recognizer: nn.Module, data: LabelledImages, batch_size: int = 500) -> LabelledImages:
    """``data`` labelled with the recognizer's own top-1 on the clean images (label-free validation:
    accuracy against these is agreement with the clean prediction)."""
    labels = [recognizer(to_float(data.images[i : i + batch_size])).argmax(1) for i in range(0, len(data), batch_size)]
    predicted = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return LabelledImages(data.name, data.split, data.images, predicted, data.classes)


# --- the command --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    config = EnhancerTrainConfig(
        **{k: v for k, v in vars(args).items() if k in EnhancerTrainConfig.__dataclass_fields__}
    )
    if config.threads:
        torch.set_num_threads(config.threads)
    world = distributed.current()
    config.check()
    label_free = config.labels == "none"
    names = training_corruptions(config.train_corruptions, config.exclude_corruptions)  # a typo fails here, at once
    novel = training_shifts(config.train_shifts)
    if novel and config.blind:
        raise ValueError("--train-shifts needs the corruption recipe; --blind trains on AugMix only")
    initial = load_enhancer(config.init) if config.init else None  # once, before the data: a bad path fails at once
    if config.warp_alignment and not (config.warp or (initial is not None and initial.num_warp)):
        raise ValueError("--warp-alignment trains an output warp: give --warp (or --init an enhancer with one)")
    spec = spec_from_args(args)

    @functools.cache
    def images_at(size: int, policy: Preprocess) -> LabelledImages:
        if label_free:
            return unlabelled_images(config, size, policy)
        return load_dataset(config.data, "train", image_size=size, root=config.data_dir, preprocess=policy)

    # An ONNX recognizer is checked on the first real training images, brought to its input its own way.
    recognizer = load_external_recognizer(
        spec, lambda pre, count: images_at(pre.input_size, pre.policy()).images[:count]
    )
    size, policy = recognizer.preprocessing.input_size, recognizer.policy or RESIZE
    full_train = images_at(size, policy) if label_free else align_labels(images_at(size, policy), recognizer)
    classes = recognizer.classes or full_train.classes or [str(i) for i in range(recognizer.num_classes)]
    full_train.classes = classes
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = config.validation_split(full_train)
    if config.train_subset:
        train = train.subset(torch.arange(min(config.train_subset, len(train))))
    if label_free:
        if len(train) < MIN_TRAIN_IMAGES:
            raise ValueError(f"the training split has {len(train)} images; at least {MIN_TRAIN_IMAGES} are needed")
        val = predicted_labels(recognizer.module, val)
    else:
        check_training_set(train)
    val_corrupted = config.corrupted_validation(val, names)

    enhancer = initial if initial is not None else DynTTAEnhancer(config.enhancer_config(size))
    model = EnhancedRecognizer(enhancer, recognizer.module)
    # validation stays on the corruptions alone, so its figures compare with fits without --train-shifts
    shift = training_shift(
        (*names, *novel),
        config.corruption_probability,
        blind=config.blind,
        compose_probability=config.compose_probability,
        augmix_probability=config.augmix_probability,
    )
    images = to_float(train.images[:AUTO_SAMPLE])
    choice = choose_augmentation(config.augment, recognizer.module, images, size, config.seed)
    # the data pipeline augments geometrically; the objective corrupts, so it also sees the clean images
    augment = geometric_augmentation(choice.name, size)
    strategy = EnhancerObjective(shift, not label_free, config.temperature, config.clean_weight, config.warp_alignment)
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
            f"{config.recognizer} ({recognizer.kind}, {size} px) on {len(train)} {config.data} images"
            f"{' without labels' if label_free else ''}, validating on {len(val)} "
            f"({'blind: AugMix' if config.blind else f'corrupted with p={config.corruption_probability:.3f}'}), "
            f"device {device}, world size {world.size}; augmentation: {choice.describe()}",
            file=sys.stderr,
        )
    started = time.perf_counter()
    trained, history = fit(model, strategy, train, val_corrupted, loop, out, augment=augment)
    train_seconds = time.perf_counter() - started
    if not world.is_main:
        return {}  # rank 0 alone evaluates and writes the checkpoint

    if not isinstance(trained, EnhancedRecognizer):
        raise TypeError(f"the training loop returned a {type(trained).__name__}, not the EnhancedRecognizer")
    trained.eval()

    def accuracy(model: nn.Module, data: LabelledImages) -> float | None:  # None: no validation split
        return round(evaluate_accuracy(model, data, device), 4) if len(data) else None

    # label-free: "accuracy" is agreement with the recognizer's top-1 on the clean image
    measure = "agreement_with_clean_prediction" if label_free else "accuracy"
    metrics: dict[str, object] = {
        f"val_corrupted_{measure}_recognizer_alone": accuracy(trained.recognizer, val_corrupted),
        f"val_corrupted_{measure}_enhanced": accuracy(trained, val_corrupted),
        f"val_clean_{measure}_recognizer_alone": accuracy(trained.recognizer, val),
        f"val_clean_{measure}_enhanced": accuracy(trained, val),
        "train_seconds": round(train_seconds, 1),
        "history": history,
    }
    recipe = {
        "command": "python -m dyntta.train enhancer " + " ".join(sys.argv[2:]),
        **asdict(config),
        "recognizer_spec": spec.to_dict(),
        "recognizer_loaded": recognizer.describe(),
        "recognizer_meta": _checkpoint_meta(config.recognizer) if recognizer.kind is Kind.CHECKPOINT else None,
        "classes": classes,
        "loss": config.describe_loss(),
        "augmentation": choice.describe(),
        "shift": "AugMix (torchvision, severity 5)"
        if config.blind
        else describe_shift(names, novel, config.augmix_probability, config.compose_probability),
        "optimizer": "AdamW, cosine schedule",
        "device": str(device),
        "world_size": world.size,
        "per_rank_batch": config.batch_size // world.size,
    }
    save_enhancer(enhancer.cpu(), out, recipe=recipe, metrics=metrics, weights_dtype=config.weights_dtype)
    print(json.dumps({"checkpoint": str(out), **{k: v for k, v in metrics.items() if k != "history"}}))
    return metrics


def _checkpoint_meta(directory: str) -> dict[str, object]:
    meta = read_checkpoint_meta(directory)
    return {k: meta.get(k) for k in ("format", "created", "num_parameters")}


def training_corruptions(include: Sequence[str], exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The corruptions an enhancer is fitted on: ``include`` less ``exclude`` (names or groups, as
    :func:`dyntta.contract.resolve_conditions` reads them), in the suite's order."""
    names, _ = resolve_conditions(include)
    left_out = set(resolve_conditions(exclude)[0]) if exclude else set()
    kept = tuple(n for n in names if n not in left_out)
    if not kept:
        raise ValueError(f"--exclude-corruptions {' '.join(exclude)} leaves no corruption to train on")
    return kept


def training_shifts(chosen: Sequence[str]) -> tuple[str, ...]:
    """The novel shifts an enhancer is also fitted on: names or families of :mod:`dyntta.shifts`, in its
    order; an unknown one is a ValueError listing the valid ones."""
    unknown = [n for n in chosen if n not in NOVEL_SHIFTS and n not in NOVEL_FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown --train-shifts {' '.join(unknown)}; expected families ({', '.join(NOVEL_FAMILIES)}) or "
            f"names ({', '.join(NOVEL_SHIFTS)})"
        )
    wanted = {name for n in chosen for name in NOVEL_FAMILIES.get(n, (n,))}
    return tuple(n for n in NOVEL_SHIFTS if n in wanted)


def describe_shift(
    corruptions: Sequence[str], novel: Sequence[str], augmix_probability: float = 0.0, compose_probability: float = 0.0
) -> str:
    """The recipe's ``shift``: the default recipe's wording, plus the novel shifts, composition and AugMix when
    there are any."""
    drawn = f"{len(corruptions)} corruptions ({', '.join(corruptions)})"
    if novel:
        drawn += f" and {len(novel)} novel shifts ({', '.join(novel)})"
    text = f"one of {drawn}, severity U{{1..5}}, with the given probability"
    if compose_probability:
        twice = f"two of the {drawn} in sequence, each severity U{{1..5}}"
        text = f"{twice}, with probability {compose_probability:g}; else {text}"
    if augmix_probability:
        text = f"AugMix (torchvision, severity 5) with probability {augmix_probability:g}, else {text}"
    return text


def validation_size(n: int, fraction: float, cap: int) -> int:
    """Held-out images: ``fraction`` of the training images, at most ``cap`` (2,000 of Fashion-MNIST's
    60,000 by default; 180 of a 1,800-image folder)."""
    return min(cap, int(round(n * fraction)))
