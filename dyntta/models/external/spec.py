"""What the user named: a :class:`RecognizerSpec` and its :class:`Kind`, told from the spec string by
:func:`spec_kind`.

A recognizer spec is one of

- a dyntta recognizer checkpoint directory (``config.json`` + ``model.safetensors``);
- ``timm:ARCH`` or ``torchvision:ARCH`` with a weights file;
- a TorchScript file (``torch.jit.save``), or ``torchscript:PATH``;
- an ONNX file (``*.onnx`` or ``onnx:PATH``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from dyntta.models.external.onnx_tolerance import ONNX_ATOL
from dyntta.models.external.preprocessing import PreprocessingOverrides


class Kind(StrEnum):
    CHECKPOINT = "checkpoint"
    TIMM = "timm"
    TORCHVISION = "torchvision"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


@dataclass(frozen=True)
class RecognizerSpec:
    """What the user named: the spec string, a weights file, overrides, class names, the ONNX tolerance."""

    spec: str
    weights: str | None = None
    overrides: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    classes: tuple[str, ...] | None = None
    onnx_atol: float = ONNX_ATOL

    @property
    def kind(self) -> Kind:
        return spec_kind(self.spec)

    @property
    def path(self) -> Path:
        """The file or directory of a checkpoint, TorchScript or ONNX spec (its ``kind:`` prefix removed)."""
        head, _, rest = self.spec.partition(":")
        return Path(rest if head in (Kind.TORCHSCRIPT, Kind.ONNX) and rest else self.spec)

    @property
    def arch(self) -> str:
        return self.spec.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "weights": self.weights,
            "overrides": {k: v for k, v in asdict(self.overrides).items() if v is not None},
            "classes": list(self.classes) if self.classes is not None else None,
            "onnx_atol": self.onnx_atol,
        }


def spec_kind(spec: str) -> Kind:
    head, sep, rest = spec.partition(":")
    if sep and head in (Kind.TIMM, Kind.TORCHVISION, Kind.TORCHSCRIPT, Kind.ONNX):
        if not rest:
            what = "file" if head in (Kind.TORCHSCRIPT, Kind.ONNX) else "architecture"
            raise ValueError(f"--recognizer {spec!r}: name the {head} {what} after the colon")
        return Kind(head)
    path = Path(spec)
    if path.is_dir():
        return Kind.CHECKPOINT
    if path.suffix.lower() == ".onnx":
        return Kind.ONNX
    return Kind.TORCHSCRIPT


def is_dyntta_checkpoint(spec: str) -> bool:
    return spec_kind(spec) is Kind.CHECKPOINT
