"""Standard batched training augmentation: random crop with padding and horizontal flip (kornia)."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def standard_augmentation(image_size: int, padding: int | None = None, hflip: bool = True) -> nn.Module:
    """Per-sample random crop (zero padding of size/8) and flip, on float (N, 3, H, W) batches."""
    pad = max(1, image_size // 8) if padding is None else padding
    ops: list[K.AugmentationBase2D] = [K.RandomCrop((image_size, image_size), padding=pad)]
    if hflip:
        ops.append(K.RandomHorizontalFlip())
    return K.AugmentationSequential(*ops)
