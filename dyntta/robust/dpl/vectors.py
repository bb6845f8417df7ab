"""Vector algebra over parameter lists: a ``Vector`` is one tensor per parameter, in the parameters' order
(the space the gradients, Hessian products and the inverse-HVP solve work in)."""

from __future__ import annotations

import torch

Vector = list[torch.Tensor]


def inner(a: Vector, b: Vector) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def l2_norm(a: Vector) -> float:
    return inner(a, a).sqrt().item()


def axpy(alpha: float | torch.Tensor, x: Vector, y: Vector) -> Vector:
    """alpha x + y."""
    return [alpha * a + b for a, b in zip(x, y, strict=True)]


def flatten(vector: Vector) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in vector])


def unflatten(flat: torch.Tensor, like: Vector) -> Vector:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out
