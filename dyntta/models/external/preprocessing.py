"""How images reach a bring-your-own recognizer: its :class:`Preprocessing` (input size, mean/std,
interpolation, crop), the command-line :class:`PreprocessingOverrides` of it, and the value checks they share.

Flags override any of the preprocessing values; a TorchScript or ONNX file carries none, so its mean/std
default to ImageNet's and its input size comes from the ONNX input shape or ``--recognizer-input-size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from dyntta.data.preprocess import INTERPOLATIONS, Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the recognizer: brought to ``input_size`` x ``input_size`` (``interpolation``,
    ``crop_pct`` of the resized image kept around its centre), scaled to [0, 1], normalised with mean/std.
    ``source`` says where the values came from."""

    input_size: int
    mean: Triple
    std: Triple
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def policy(self) -> Preprocess:
        """The :class:`~dyntta.data.Preprocess` that brings any image to this input: timm's and
        torchvision's evaluation transform, a centre crop of ``crop_pct`` of the shorter side."""
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        return Preprocess("center_crop", self.crop_pct, self.interpolation)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreprocessingOverrides:
    """Values given on the command line; ``None`` keeps the recognizer's own."""

    input_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if not given:
            return base
        for name in ("mean", "std"):
            if name in given:
                given[name] = as_triple(given[name], name)
        source = f"{base.source} + flags ({', '.join(given)})" if base.source else f"flags ({', '.join(given)})"
        return replace(base, **given, source=source)


def as_triple(value: Sequence[float] | None, name: str) -> Triple | None:
    if value is None:
        return None
    if len(value) != 3:
        raise ValueError(f"{name} needs 3 values (R G B), got {list(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


def square_size(dims: Sequence[int], what: str) -> int:
    if len(dims) != 2 or dims[0] != dims[1]:
        raise ValueError(f"{what} takes {tuple(dims)} inputs; dyntta images are square: pass --recognizer-input-size")
    return int(dims[0])
