"""The one preprocessing contract shared by training, evaluation, export and the gateway (no torch).

Every image, whatever its source (IDX bytes, CIFAR arrays, JPEG uploads), becomes an RGB uint8 array of
the model's input size through :func:`to_model_input`, under the recognizer's :class:`Preprocess` policy:

- ``resize``: straight to ``size`` x ``size`` (a non-square image is squashed). What the committed
  Fashion-MNIST models were trained with, and the default of any checkpoint that records no policy.
- ``center_crop``: the timm / torchvision evaluation transform: the centred square covering ``crop_pct``
  of the shorter side, resized to ``size`` (``Resize(size / crop_pct)`` + ``CenterCrop(size)`` in one
  resampling, :func:`PIL.ImageOps.fit`). ``crop_pct=1.0`` (the default) keeps the whole shorter side.
- ``letterbox``: the whole image scaled to fit, centred, the rest filled with ``fill``
  (:func:`PIL.ImageOps.pad`).

For a square source all three give the same pixels (with ``crop_pct=1.0``), so the policy only matters
for non-square photos. The models take uint8 or [0, 1] pixels and normalise inside the graph, so the
gateway and the training data see exactly the same conversion. This module imports numpy and Pillow
only: the gateway decodes uploads with it without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
from PIL import ExifTags, Image, ImageOps

Mode = Literal["resize", "center_crop", "letterbox"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
MODES: tuple[str, ...] = get_args(Mode)
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)

#: Pillow resampling of the default policy (bilinear, with Pillow's antialiasing when shrinking).
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Preprocess:
    """How an image of any shape becomes the model's square input; recorded in the recognizer's
    checkpoint (``config.json`` ``model.preprocess``) and its Triton config (``preprocess`` parameter)."""

    mode: Mode = "resize"
    crop_pct: float = 1.0  # center_crop: fraction of the shorter side kept (timm's eval default is 0.875)
    interpolation: Interpolation = "bilinear"
    fill: tuple[int, int, int] = (0, 0, 0)  # letterbox: RGB of the padding

    def __post_init__(self) -> None:
        mode = str(self.mode).replace("-", "_")
        if mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {self.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        fill = tuple(int(c) for c in self.fill)
        if len(fill) != 3 or not all(0 <= c <= 255 for c in fill):
            raise ValueError(f"fill must be three integers in [0, 255], got {self.fill!r}")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "fill", fill)

    @property
    def resample(self) -> Image.Resampling:
        return Image.Resampling[self.interpolation.upper()]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fill"] = list(self.fill)
        return data

    def to_json(self) -> str:
        """Compact, key-sorted JSON: the value of the Triton ``preprocess`` parameter."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Preprocess:
        """``None`` or ``{}`` is the legacy policy (plain resize); unknown keys are a ``ValueError``."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown preprocessing field(s) {', '.join(unknown)}")
        if "fill" in data:
            data["fill"] = tuple(data["fill"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | None) -> Preprocess:
        """Parse :meth:`to_json`; an empty string or ``None`` means the legacy policy (plain resize)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"preprocessing policy is not JSON ({exc}): {text[:100]!r}") from None
        if not isinstance(data, dict):
            raise ValueError(f"preprocessing policy must be a JSON object, got {text[:100]!r}")
        return cls.from_dict(cast(dict[str, Any], data))

    def describe(self) -> str:
        """One line for logs and reports."""
        if self.mode == "center_crop":
            return f"center_crop (crop_pct {self.crop_pct:g}, {self.interpolation})"
        if self.mode == "letterbox":
            return f"letterbox (fill {self.fill}, {self.interpolation})"
        return f"resize ({self.interpolation})"


RESIZE = Preprocess()
"""The legacy policy: the default of checkpoints and model repositories that record none."""
CENTER_CROP = Preprocess("center_crop")
"""The default of new trainings: the shorter side kept whole, the longer one centre-cropped."""


def _fit(rgb: Image.Image, size: int, policy: Preprocess) -> Image.Image:
    if rgb.size == (size, size):  # every policy leaves a square image of the model's size as it is
        return rgb
    if policy.mode == "center_crop":
        # ImageOps.fit trims ``bleed`` of each side, then takes the centred square of what is left: with
        # bleed (1 - crop_pct) / 2 the square is crop_pct of the shorter side, timm's evaluation crop.
        return ImageOps.fit(rgb, (size, size), policy.resample, bleed=(1.0 - policy.crop_pct) / 2)
    if policy.mode == "letterbox":
        return ImageOps.pad(rgb, (size, size), policy.resample, color=policy.fill)
    return rgb.resize((size, size), policy.resample)


def to_model_input(image: Image.Image, size: int, policy: Preprocess = RESIZE) -> np.ndarray[Any, Any]:
    """Convert a PIL image to an RGB uint8 array of shape (size, size, 3) under ``policy``.

    The conversion, mode by mode (the pixels first, then the ``policy``'s one resampling to ``size``):

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

    ``L`` and ``RGB`` images under the default policy take exactly the path they always took, so training
    data and the committed models' inputs are unchanged.
    """
    if getattr(image, "is_animated", False) and image.tell() != 0:
        image.seek(0)
    image = _upright(image)
    rgb = _fit(_to_rgb(image), size, policy)
    return np.asarray(rgb, dtype=np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    # getexif() is cheap (no EXIF -> empty); exif_transpose copies, so only call it when there is work
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


#: modes Pillow brings to RGB exactly as the contract wants (no alpha, 8 bits per channel)
_DIRECT = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "HSV", "LAB"}
#: 8-bit modes with an alpha channel (premultiplied "a" modes are un-premultiplied by convert first)
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
#: integer greyscale modes holding 16-bit samples (PNG, TIFF); "I" is read as 16-bit too, clipped
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


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


__all__ = [
    "CENTER_CROP",
    "INTERPOLATIONS",
    "MODES",
    "RESAMPLE",
    "RESIZE",
    "Interpolation",
    "Mode",
    "Preprocess",
    "to_model_input",
]
