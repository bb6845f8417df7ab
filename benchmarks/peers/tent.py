"""TENT (Wang et al., ICLR 2021): test-time entropy minimisation of the BN affine parameters.

As in the paper: BN layers normalise with batch statistics, only their scale and shift are trained, one Adam
step (lr 1e-3, the paper's CIFAR setting) on the mean prediction entropy per batch, and the batch's
predictions come from the same forward pass as the step. TENT is *online*: the updated parameters carry
over to the next batch until :meth:`Tent.reset` (the paper resets per corruption type). Episodic TENT with
one step would predict exactly what BN adaptation predicts, since the step only affects later batches; so
does the first batch of every episode.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.peers.norm import batch_norm_layers, use_batch_statistics


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of (N, K) logits."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


class Tent:
    online = True

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        self.model = use_batch_statistics(model)
        self.model.requires_grad_(False)
        self.params: list[nn.Parameter] = []
        for bn in batch_norm_layers(self.model):
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(True)
                    self.params.append(p)
        self.source = [p.detach().clone() for p in self.params]
        self.lr = lr
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self.source, strict=True):
                p.copy_(p0)
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr, betas=(0.9, 0.999))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        self.optimizer.zero_grad(set_to_none=True)
        entropy(logits).backward()
        self.optimizer.step()
        return logits.detach()
