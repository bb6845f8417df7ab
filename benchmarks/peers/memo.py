"""MEMO (Zhang, Levine and Finn, NeurIPS 2022): marginal entropy minimisation over augmentations, per image.

For each test image: draw ``augmentations`` AugMix-augmented copies, average the model's softmax over them
(the marginal), take one SGD step on all parameters to lower the marginal's entropy, predict the original
image with the updated model, then restore the source weights (episodic: every image starts from the
source model). Choices here (paper-inspired, sized for CPU): 8 copies, SGD lr 0.005 without momentum, BN in
eval mode with the training statistics (the paper pairs MEMO with single-image BN adaptation for BN
models; not done here), torchvision's AugMix without the ops that overlap the corruptions (all_ops=False).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torchvision.transforms import v2


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean of the softmaxes of (B, K) logits, computed in log space."""
    log_marginal = logits.log_softmax(1).logsumexp(0) - math.log(len(logits))
    return -(log_marginal.exp() * log_marginal).sum()


class Memo:
    online = False

    def __init__(self, model: nn.Module, augmentations: int = 8, lr: float = 0.005) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(True)
        self.params = list(self.model.parameters())
        self.source = [p.detach().clone() for p in self.params]
        self.augment = v2.AugMix(all_ops=False)
        self.augmentations = augmentations
        self.optimizer = torch.optim.SGD(self.params, lr=lr)

    def reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.params, self.source, strict=True):
                p.copy_(p0)

    def adapt(self, image: torch.Tensor) -> None:
        """One marginal-entropy step for one (3, H, W) image."""
        copies = torch.stack([self.augment(image) for _ in range(self.augmentations)])
        self.optimizer.zero_grad(set_to_none=True)
        marginal_entropy(self.model(copies)).backward()
        self.optimizer.step()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for image in x:  # per image by definition: each one adapts its own copy of the weights
            self.adapt(image)
            with torch.no_grad():
                out.append(self.model(image[None]))
            self.reset()
        return torch.cat(out)
