"""The DynTTA enhancer: a predictor blends many differentiable image operations per image.

    (logits, magnitudes) = predictor(x)            # once per forward pass
    w = softmax(logits)                             # over ops + low-pass rings + high-pass rings + U-Net
    y = clamp(sum_k w_k op_k(x, m_k) + F(x; w_lpf, w_hpf) + w_unet unet(x), 0, 1)
    y = warp(y, m_warp)                             # only with EnhancerConfig.warp (warp.py)

F is the whole bank of ideal low/high-pass filters collapsed into one per-image radial filter (see
frequency.py). Nothing depends on other images of the batch (no batch statistics at eval time), so a
server may batch requests freely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dyntta.enhancer.frequency import RADII, RadialFrequencyFilter
from dyntta.enhancer.ops import OPS
from dyntta.enhancer.predictor import Predictor
from dyntta.enhancer.unet import ResidualUNet
from dyntta.enhancer.warp import WARP_PARAMETERS, warp


@dataclass
class EnhancerConfig:
    input_size: int = 32
    predictor_width: int = 32
    unet_width: int = 10
    identity_logit: float = 4.0  # initial preference for the identity op (about half of the blend)
    warp: bool = False  # an affine warp of the whole output (warp.py); checkpoints before it have none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnhancerConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def blend_names() -> list[str]:
    """Names of the softmax blend entries, in order (what the blend weights refer to)."""
    return (
        [op.name for op in OPS] + [f"lowpass_{r:.2f}" for r in RADII] + [f"highpass_{r:.2f}" for r in RADII] + ["unet"]
    )


def magnitude_names() -> list[str]:
    return [op.name for op in OPS if op.parameterised]


class DynTTAEnhancer(nn.Module):
    """Input float (B, 3, S, S) in [0, 1] -> enhanced float (B, 3, S, S) in [0, 1]."""

    def __init__(self, config: EnhancerConfig | None = None) -> None:
        super().__init__()
        self.config = config or EnhancerConfig()
        self.ops = OPS
        self.param_slot: dict[str, int] = {}
        for op in OPS:
            if op.parameterised:
                self.param_slot[op.name] = len(self.param_slot)
        self.frequency = RadialFrequencyFilter(self.config.input_size)
        self.unet = ResidualUNet(self.config.unet_width)
        self.num_blend = len(OPS) + 2 * self.frequency.num_bands + 1
        self.num_warp = WARP_PARAMETERS if self.config.warp else 0  # the last raw magnitudes, when present
        self.predictor = Predictor(self.num_blend, len(self.param_slot) + self.num_warp, self.config.predictor_width)
        self.predictor.init_identity(0, self.config.identity_logit)

    def blend_parameters(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) softmax blend weights and (B, P) raw magnitudes for ``x``."""
        logits, magnitudes = self.predictor(x)
        return torch.softmax(logits, dim=1), magnitudes

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        weights, magnitudes = self.blend_parameters(x)
        n_ops, bands = len(self.ops), self.frequency.num_bands
        zero = torch.zeros_like(magnitudes[:, 0])
        out = self.frequency(x, weights[:, n_ops : n_ops + bands], weights[:, n_ops + bands : n_ops + 2 * bands])
        for k, op in enumerate(self.ops):
            m = magnitudes[:, self.param_slot[op.name]] if op.parameterised else zero
            out = out + weights[:, k].view(-1, 1, 1, 1) * op.fn(x, m)
        out = out + weights[:, -1].view(-1, 1, 1, 1) * self.unet(x)
        enhanced = out.clamp(0.0, 1.0)
        if self.num_warp:
            enhanced = warp(enhanced, magnitudes[:, -self.num_warp :])
        return (enhanced, weights) if return_weights else enhanced

    def warp_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` warped by the warp the predictor chooses for it, without the blend: what the warp alone does to
        the shifted image (the trainer's ``--warp-alignment`` compares it with the clean image)."""
        if not self.num_warp:
            raise ValueError("this enhancer has no output warp (EnhancerConfig.warp is off)")
        _, magnitudes = self.blend_parameters(x)
        return warp(x, magnitudes[:, -self.num_warp :])

    def op_names(self) -> list[str]:
        """The K blended operations, in the order of the weights ``forward(x, return_weights=True)``
        returns (the served enhancer's ``OP_WEIGHTS`` columns)."""
        return blend_names()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
