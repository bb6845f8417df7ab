"""SAM (Foret et al., ICLR 2021) and ASAM (Kwon et al., ICML 2021): reference points for DAMP.

DAMP is the random counterpart of ASAM. Per step: g = grad L(w); e = rho g / |g| (SAM) or
e = rho T^2 g / |T g| with T = |w| + eta (ASAM, elementwise); the gradient at w + e steps the clean w.
Like DAMP, only conv/linear kernels and normalisation scales are perturbed. The second forward pass
leaves the BatchNorm buffers as the first one set them. ``rho = 0`` is plain training (at twice the cost).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dyntta.robust.damp import perturbable_modules
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy


@register_strategy("sam")
class SAM(TrainingStrategy):
    name = "sam"
    adaptive = False

    def __init__(self, label_smoothing: float = 0.0, rho: float = 0.05, eta: float = 0.0) -> None:
        super().__init__(label_smoothing)
        if rho < 0:
            raise ValueError(f"{self.name} rho must be >= 0, got {rho}")
        self.rho, self.eta = rho, eta

    def training_step(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        scaled = {id(m.weight) for m in perturbable_modules(model)}
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, images, labels)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            ascent: list[torch.Tensor | None] = []
            for p, g in zip(params, grads, strict=True):
                if g is None or id(p) not in scaled:
                    ascent.append(None)
                    continue
                ascent.append(g * (p.abs() + self.eta) ** 2 if self.adaptive else g.clone())
            # |T g| for ASAM (T = |w| + eta), |g| for SAM: the denominator of e
            norms = [
                (g * (p.abs() + self.eta)) if self.adaptive else g
                for p, g in zip(params, grads, strict=True)
                if g is not None and id(p) in scaled
            ]
            squares = [(t * t).sum() for t in norms]
            norm = torch.sqrt(sum(squares[1:], squares[0])).clamp_min(1e-12)  # the plain sum: 0 + s0 is s0
            # (w + e) - e is not w in floating point: restore the clean weights exactly (data-parallel
            # ranks with different e would otherwise drift apart in the last bits)
            clean = [p.detach().clone() if e is not None else None for p, e in zip(params, ascent, strict=True)]
            for p, e in zip(params, ascent, strict=True):
                if e is not None:
                    e.mul_(self.rho / norm)
                    p.add_(e)
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        sharp_loss = self.loss(model, images, labels)
        sharp_loss.backward()
        with torch.no_grad():
            for p, c in zip(params, clean, strict=True):
                if c is not None:
                    p.copy_(c)
            for buffer, saved in buffers:
                buffer.copy_(saved)
        optimizer.step()
        return {"loss": loss.item(), "sharp_loss": sharp_loss.item()}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "rho": self.rho,
            "eta": self.eta,
            "perturbed": "conv/linear kernels and BatchNorm scales",
        }


@register_strategy("asam")
class ASAM(SAM):
    name = "asam"
    adaptive = True

    def __init__(self, label_smoothing: float = 0.0, rho: float = 1.0, eta: float = 0.0) -> None:
        super().__init__(label_smoothing, rho, eta)
