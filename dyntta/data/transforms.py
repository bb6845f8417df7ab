"""The one preprocessing contract shared by training, evaluation, export and the gateway.

Every image, whatever its source (IDX bytes, CIFAR arrays, JPEG uploads), becomes an RGB uint8 array of
the model's input size through :func:`to_model_input`. The models themselves take uint8 or [0, 1] pixels and
normalise inside the graph, so the gateway and the training data see exactly the same conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

#: Pillow resampling used everywhere an image is brought to the model's input size.
RESAMPLE = Image.Resampling.BILINEAR


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Convert a PIL image to an RGB uint8 array of shape (size, size, 3).

    Grayscale and palette images are expanded to three identical channels; alpha is dropped by
    compositing on black, which is what ``Image.convert("RGB")`` does.
    """
    rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


def arrays_to_model_input(arrays: np.ndarray, size: int) -> torch.Tensor:
    """Convert a stack of (N, H, W) grayscale or (N, H, W, 3) RGB uint8 arrays to a (N, 3, size, size) tensor.

    Goes through :func:`to_model_input` image by image so the result is byte-identical to what the gateway
    produces from the same pixels uploaded as a lossless file.
    """
    out = np.empty((len(arrays), size, size, 3), dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i] = to_model_input(Image.fromarray(array), size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1]."""
    return images.float().div_(255.0)
