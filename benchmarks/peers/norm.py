"""BatchNorm-statistics adaptation (Schneider et al. 2020, Nado et al. 2020): normalise every BN layer with
the statistics of the incoming batch instead of the training set's running statistics."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def use_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose BN layers use batch statistics and never update running ones.

    With one image, the "batch" statistics are that image's per-channel spatial mean and variance (4 values
    per channel in the last stage of a 32 px ResNet): this is what the method degrades to at batch size 1.
    """
    adapted = copy.deepcopy(model).eval()
    for bn in batch_norm_layers(adapted):
        bn.train()  # train mode normalises with batch statistics ...
        bn.track_running_stats = False  # ... and, without running buffers, never writes them
        bn.running_mean = None
        bn.running_var = None
    return adapted


class BatchNormAdapt:
    """Episodic: every batch is normalised with its own statistics; nothing is carried between batches."""

    online = False

    def __init__(self, model: nn.Module) -> None:
        self.model = use_batch_statistics(model)

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x)
        return logits
