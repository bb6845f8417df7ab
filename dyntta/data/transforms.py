"""The torch side of the preprocessing contract: stacks of arrays to model-input tensors, uint8 to float.

The per-image conversion is :func:`dyntta.data.preprocess.to_model_input` (torch-free, what the gateway
imports); this module only batches it into the tensors training and evaluation use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from dyntta.data.preprocess import RESAMPLE, RESIZE, Preprocess, to_model_input


def arrays_to_model_input(arrays: np.ndarray[Any, Any], size: int, policy: Preprocess = RESIZE) -> torch.Tensor:
    """Convert a stack of (N, H, W) grayscale or (N, H, W, 3) RGB uint8 arrays to a (N, 3, size, size) tensor.

    Goes through :func:`to_model_input` image by image so the result is byte-identical to what the gateway
    produces from the same pixels uploaded as a lossless file.
    """
    out = np.empty((len(arrays), size, size, 3), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = to_model_input(Image.fromarray(array), size, policy)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)


__all__ = ["RESAMPLE", "Preprocess", "arrays_to_model_input", "to_float", "to_model_input"]
