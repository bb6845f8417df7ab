"""The one preprocessing contract shared by training, evaluation, export and the gateway.

Every image, whatever its source (IDX bytes, CIFAR arrays, JPEG uploads), becomes an RGB uint8 array of
the model's input size through :func:`to_model_input`. The models themselves take uint8 or [0, 1] pixels and
normalise inside the graph, so the gateway and the training data see exactly the same conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

#: Pillow resampling used everywhere an image is brought to the model's input size.
RESAMPLE = Image.Resampling.BILINEAR

#: modes Pillow brings to RGB exactly as the contract wants (no alpha, 8 bits per channel)
_DIRECT = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "HSV", "LAB"}
#: 8-bit modes with an alpha channel (premultiplied "a" modes are un-premultiplied by convert first)
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
#: integer greyscale modes holding 16-bit samples (PNG, TIFF); "I" is read as 16-bit too, clipped
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """Convert a PIL image to an RGB uint8 array of shape (size, size, 3).

    The conversion, mode by mode (the pixels first, then one bilinear resize to ``size`` x ``size``):

    - animations (APNG, animated WebP): the first frame;
    - EXIF orientation is applied (a phone photo is classified the way it is displayed);
    - ``L``, ``1``, ``P`` without transparency: three identical channels (palette colours looked up);
    - 16-bit greyscale (``I;16*``, and ``I`` read as 16-bit): scaled to 8 bits, ``round(v * 255 / 65535)``,
      values outside [0, 65535] clipped;
    - float greyscale (``F``): intensities in [0, 1], clipped, ``round(v * 255)``;
    - alpha (``LA``, ``RGBA``, ``PA``, ``P`` with transparency): composited on black,
      ``round(c * a / 255)``;
    - ``CMYK``: ``round((255 - c) * (255 - k) / 255)`` per channel (no colour management);
    - other modes Pillow can convert (``YCbCr``, ``RGBX``, ...): ``Image.convert("RGB")``.

    ``L`` and ``RGB`` images take exactly the path they always took, so training data is unchanged.
    """
    if getattr(image, "is_animated", False) and image.tell() != 0:
        image.seek(0)
    image = _upright(image)
    rgb = _to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    # getexif() is cheap (no EXIF -> empty); exif_transpose copies, so only call it when there is work
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _DIRECT:
        return image.convert("RGB")
    if mode in _SIXTEEN_BIT:
        samples = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        grey = (samples * 255 + 32767) // 65535  # round(v * 255 / 65535), exact in integers
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if mode in _ALPHA:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        # c * a / 255 rounded: (x + 127) // 255 never meets a tie, since 255 is odd
        premultiplied = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(premultiplied.astype(np.uint8))
    if mode == "CMYK":
        cmyk = np.asarray(image, dtype=np.uint16)
        white = 255 - cmyk[..., 3:]
        rgb = ((255 - cmyk[..., :3]) * white + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return image.convert("RGB")


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
