"""L-infinity PGD on [0, 1] pixels, with expectation over transformation (EOT) for stochastic models.

Used by Learn2Perturb's adversarial training and by the robustness benchmark. Attacks restore the caller's
train/eval mode (the Learn2Perturb code left models in train mode after attacking).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pgd_linf(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    eot_samples: int = 1,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Return adversarial images within ``eps`` (L-inf) of ``images`` that raise the cross-entropy.

    ``eot_samples > 1`` averages the input gradient over that many forward passes (for models whose
    output is random, e.g. Learn2Perturb with its noise on). ``eval_mode`` attacks with BatchNorm using
    running statistics (and no running-statistics update); the model's mode is restored afterwards.
    """
    if eps < 0 or steps < 0 or step_size < 0:
        raise ValueError("eps, steps and step_size must be non-negative")
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        images = images.detach()
        adv = images.clone()
        if random_start and eps > 0:
            adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp_(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            grad = torch.zeros_like(adv)
            for _ in range(max(1, eot_samples)):
                loss = F.cross_entropy(model(adv), labels)
                grad += torch.autograd.grad(loss, adv)[0]
            with torch.no_grad():
                adv = adv.detach() + step_size * grad.sign()
                adv = torch.min(torch.max(adv, images - eps), images + eps).clamp_(0, 1)
        return adv.detach()
    finally:
        model.train(was_training)
