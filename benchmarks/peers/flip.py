"""Classic test-time augmentation: the mean of the logits of the image and its horizontal mirror (ttach)."""

from __future__ import annotations

import ttach
from torch import nn


def flip_tta(model: nn.Module) -> nn.Module:
    """``model`` wrapped to average its logits over the identity and a horizontal flip (2 passes).

    Fashion-MNIST's training augmentation includes horizontal flips, so the mirror is in distribution.
    """
    wrapped: nn.Module = ttach.ClassificationTTAWrapper(
        model, ttach.Compose([ttach.HorizontalFlip()]), merge_mode="mean"
    )
    return wrapped
