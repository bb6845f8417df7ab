"""What loading returns: the :class:`LoadedRecognizer` (module, spec, preprocessing, classes, ONNX parity)
around a :class:`FrozenRecognizer`, which has the dyntta image contract (float ``(N, 3, S, S)`` in [0, 1],
i.e. ``to_model_input`` bytes / 255, in; logits out) with the recognizer's own normalisation folded inside,
so the enhancer in front of it always works on plain pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dyntta.data.preprocess import Preprocess
from dyntta.models.external.onnx_tolerance import OnnxParity
from dyntta.models.external.preprocessing import Preprocessing, Triple
from dyntta.models.external.spec import Kind, RecognizerSpec


@dataclass
class LoadedRecognizer:
    """The frozen module (float [0, 1] NCHW in, logits out), how to feed it, and what its outputs are."""

    module: nn.Module
    spec: RecognizerSpec
    preprocessing: Preprocessing
    num_classes: int
    classes: list[str] | None  # None: neither the checkpoint nor --classes names them (use the data set's)
    onnx_parity: OnnxParity | None = None
    policy: Preprocess | None = None  # how images of any shape reach input_size; None: preprocessing.policy()

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = self.preprocessing.policy()

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    def describe(self) -> dict[str, Any]:
        """For recipes and export reports."""
        return {
            "kind": str(self.kind),
            **self.spec.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "policy": self.policy.to_dict() if self.policy else None,
            "num_classes": self.num_classes,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
            "onnx_parity": asdict(self.onnx_parity) if self.onnx_parity else None,
        }


class FrozenRecognizer(nn.Module):
    """``network((pixels - mean) / std)`` with every parameter frozen and the network always in eval mode
    (BatchNorm statistics and dropout never change, whatever ``train()`` the caller sets)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: Triple, std: Triple) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenRecognizer:
        super().train(False)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network((pixels - self.mean) / self.std)
        return out
