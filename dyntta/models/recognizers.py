"""Recognizer factory: any timm architecture, adapted for small inputs, with normalisation inside.

A recognizer takes float pixels in [0, 1], shape (N, 3, H, W), and returns logits. Normalisation lives in
the module (and therefore in the exported ONNX graph), so callers only ever deal with raw pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from dyntta.data.preprocess import RESIZE, Preprocess

#: Inputs at or below this side length get the small-input stem (first strided conv -> stride 1).
SMALL_INPUT_MAX = 64


@register_model
def resnet18_half(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 at half width (channels 32-256, 2.8 M parameters): the default 32 px recognizer."""
    if pretrained:
        raise ValueError("resnet18_half has no pretrained weights")
    for hub_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # passed by create_model
        kwargs.pop(hub_only, None)
    kwargs.setdefault("channels", (32, 64, 128, 256))
    kwargs.setdefault("stem_width", 32)
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]  # timm types the class as an instance


@dataclass
class RecognizerConfig:
    """Everything needed to rebuild a recognizer; saved beside its weights."""

    arch: str
    classes: list[str]
    input_size: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    small_input: bool | None = None  # None: decided from input_size
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # How an image of any shape becomes input_size x input_size: training, evaluation, export (the Triton
    # ``preprocess`` parameter) and the gateway apply it. Checkpoints that record none were trained with
    # plain resize (the default here).
    preprocess: Preprocess = RESIZE

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def uses_small_input_stem(self) -> bool:
        return self.input_size <= SMALL_INPUT_MAX if self.small_input is None else self.small_input

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "preprocess": self.preprocess.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecognizerConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["mean"], known["std"] = tuple(known.get("mean", cls.mean)), tuple(known.get("std", cls.std))
        known["preprocess"] = Preprocess.from_dict(known.get("preprocess"))
        return cls(**known)


class Recognizer(nn.Module):
    """Normalisation + a timm classifier. Input: float (N, 3, H, W) in [0, 1]. Output: logits (N, classes)."""

    mean: torch.Tensor  # buffers, declared for type checkers (nn.Module.__getattr__ returns Tensor | Module)
    std: torch.Tensor

    def __init__(self, config: RecognizerConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else create_backbone(config)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone((pixels - self.mean) / self.std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def create_backbone(config: RecognizerConfig) -> nn.Module:
    """Create the timm model for ``config`` (random init: there is no model hub at run time)."""
    if not timm.is_model(config.arch):
        raise ValueError(f"unknown timm architecture {config.arch!r} (see timm.list_models())")
    model = timm.create_model(config.arch, pretrained=False, num_classes=config.num_classes, **config.model_kwargs)
    if config.uses_small_input_stem:
        adapt_stem_for_small_inputs(model)
    return model


def adapt_stem_for_small_inputs(model: nn.Module) -> None:
    """Set the first strided convolution to stride 1, the usual CIFAR-style adaptation.

    ImageNet stems downsample 4x before the first stage (strided conv + pool), which leaves 8x8 maps from
    a 32 px input. Removing the first stride keeps 16x16 maps for any timm family (ResNet, RegNet,
    MobileNet, EfficientNet, ConvNeXt's patchify conv) without architecture-specific code.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
            module.stride = (1, 1)
            return
    raise ValueError("model has no strided convolution to adapt for small inputs")


def create_recognizer(arch: str, classes: list[str], **config_kwargs: Any) -> Recognizer:
    return Recognizer(RecognizerConfig(arch=arch, classes=list(classes), **config_kwargs))
