"""Batched training augmentation (kornia): random crop with padding and horizontal flip, and the choice of
how much of it an enhancer fit may apply in front of a frozen recognizer.

An enhancer learns through its recognizer, so its training images must be ones the recognizer reads like
the originals. A dyntta recognizer was trained with crop and flip and is invariant to them; a recognizer a
user brings may not be (a torchvision MobileNetV3 trained without flips agreed with itself on 75 % of
flipped images and 32 % of cropped-and-flipped ones): the enhancer then spends its capacity undoing the
augmentation, and gets worse on real inputs. ``--augment auto`` therefore measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import kornia.augmentation as K
import torch
from torch import nn

#: ``--augment`` choices, strongest first after ``auto``
AUGMENTATIONS = ("auto", "crop-flip", "flip", "none")
#: ``auto`` keeps an augmentation when the recognizer's top-1 on augmented images agrees with its top-1 on
#: the originals at least this often (dyntta's recognizers: 0.97 for crop-flip, 1.0 for flip)
MIN_AGREEMENT = 0.9
#: training images ``auto`` looks at
AUTO_SAMPLE = 128


def standard_augmentation(image_size: int, padding: int | None = None, hflip: bool = True) -> nn.Module:
    """Per-sample random crop (zero padding of size/8) and flip, on float (N, 3, H, W) batches."""
    pad = max(1, image_size // 8) if padding is None else padding
    ops: list[K.AugmentationBase2D] = [K.RandomCrop((image_size, image_size), padding=pad)]
    if hflip:
        ops.append(K.RandomHorizontalFlip())
    return K.AugmentationSequential(*ops)


def geometric_augmentation(name: str, image_size: int) -> nn.Module:
    """The module for an ``--augment`` choice other than ``auto``."""
    if name == "crop-flip":
        return standard_augmentation(image_size)
    if name == "flip":
        return K.AugmentationSequential(K.RandomHorizontalFlip())
    if name == "none":
        return nn.Identity()
    raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")


@dataclass(frozen=True)
class AugmentationChoice:
    """What ``--augment`` resolved to, and (for ``auto``) the agreement that decided it."""

    name: str
    requested: str
    agreement: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.agreement:
            return self.name
        measured = ", ".join(f"{k} {v:.2f}" for k, v in self.agreement.items())
        return f"{self.name} (auto: the recognizer keeps its top-1 under {measured}; kept at >= {MIN_AGREEMENT})"


@torch.no_grad()
def choose_augmentation(
    requested: str, recognizer: nn.Module, images: torch.Tensor, image_size: int, seed: int = 0
) -> AugmentationChoice:
    """Resolve ``--augment``: ``auto`` takes the strongest of crop-flip and flip under which the frozen
    ``recognizer`` keeps its top-1 on at least :data:`MIN_AGREEMENT` of ``images`` (float, a sample of the
    training set), else none. Deterministic for a seed, so every rank of a distributed run agrees."""
    if requested != "auto":
        geometric_augmentation(requested, image_size)  # validates the name
        return AugmentationChoice(requested, requested)
    sample = images[:AUTO_SAMPLE]
    reference = recognizer(sample).argmax(1)
    agreement: dict[str, float] = {}
    for name in AUGMENTATIONS[1:-1]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            augmented = geometric_augmentation(name, image_size)(sample)
        agreement[name] = float((recognizer(augmented).argmax(1) == reference).float().mean())
        if agreement[name] >= MIN_AGREEMENT:
            return AugmentationChoice(name, requested, agreement)
    return AugmentationChoice("none", requested, agreement)
