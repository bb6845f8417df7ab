"""AdvBN (Shu et al., NeurIPS 2021): adversarial perturbation of feature statistics, with dual BatchNorm.

Fine-tunes a trained recognizer. The backbone is cut after a stage (``cut``, default ResNet ``layer1``):
the front (stem ... cut) is frozen with BatchNorm in eval mode; every BatchNorm of the trainable head is
duplicated into a clean and an adversarial branch (both start from the trained BN). Per batch:

    F = front(x) (no grad);  mu = mean of F over (N, H, W)        # one (1, C, 1, 1) for the batch
    a = b = 1;  head in eval mode, adversarial BN branch
    repeat K (6):  F_adv = relu((F - mu) * b + mu * a)
                   a, b += tau * sign(grad CE(head(F_adv), y)), clipped to [1 - eps, 1 + eps]  (0.2, 1.1)
    head in train mode:  L = CE(head(F), clean BN) + adv_weight * CE(head(F_adv), adversarial BN)

(``F_adv`` is recomputed from the final ``a, b``.) Only the head is stepped. The ReLU is there because the
ResNet cut is post-ReLU. At inference one BN branch is used; it is chosen once (``branch``, default
``clean``, which the paper uses for ImageNet-C) and folded back into a plain recognizer for export.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyntta.robust.plain import plain_recognizer, recognizer_config
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

BRANCHES = ("clean", "adv")


class DualBatchNorm2d(nn.Module):
    """Two independent BatchNorms; ``route`` selects the one used by ``forward``."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        import copy

        self.clean = bn
        self.adv = copy.deepcopy(bn)
        self.route = "clean"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clean(x) if self.route == "clean" else self.adv(x)


def set_route(model: nn.Module, route: str) -> None:
    for module in model.modules():
        if isinstance(module, DualBatchNorm2d):
            module.route = route


def split_backbone(backbone: nn.Module, cut: str) -> tuple[list[nn.Module], list[nn.Module]]:
    """Split a backbone whose top-level children run in order (timm ResNet family) after child ``cut``."""
    names = [name for name, _ in backbone.named_children()]
    if cut not in names:
        raise ValueError(
            f"AdvBN cut {cut!r} is not a top-level module of {type(backbone).__name__}; choose one of {names}"
        )
    children = list(backbone.children())
    index = names.index(cut) + 1
    return children[:index], children[index:]


def run(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for module in modules:
        x = module(x)
    return x


@register_strategy("advbn")
class AdvBN(TrainingStrategy):
    """Adversarial feature-statistics fine-tuning (``adv_weight = 0`` is plain fine-tuning of the head)."""

    name = "advbn"
    #: the paper's fine-tune: SGD from lr 1e-3, x0.1 every 10 of 20 epochs (here: at half the steps)
    schedule = "step"
    default_lr = 1e-3

    def __init__(
        self,
        label_smoothing: float = 0.0,
        eps: float = 1.1,
        steps: int = 6,
        step_size: float = 0.2,
        adv_weight: float = 1.0,
        cut: str = "layer1",
        relu: bool = True,
        branch: str = "clean",
    ) -> None:
        super().__init__(label_smoothing)
        if branch not in BRANCHES:
            raise ValueError(f"AdvBN branch must be one of {BRANCHES}, got {branch!r}")
        if eps < 0 or steps < 0 or step_size < 0:
            raise ValueError("AdvBN eps, steps and step_size must be non-negative")
        self.eps, self.steps, self.step_size = eps, steps, step_size
        self.adv_weight, self.cut, self.relu, self.branch = adv_weight, cut, relu, branch
        self.front: list[nn.Module] = []
        self.head: list[nn.Module] = []
        self.last_inner_losses: list[float] = []

    # -- model ------------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        backbone = model.get_submodule("backbone")
        self.front, self.head = split_backbone(backbone, self.cut)
        # The split is only valid if running the children in order is the backbone's forward.
        size = recognizer_config(model).input_size
        probe = torch.rand(2, 3, size, size, device=next(model.parameters()).device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            if not torch.allclose(backbone(probe), run(self.head, run(self.front, probe)), atol=1e-4):
                raise ValueError(
                    f"{type(backbone).__name__}'s forward is not its children run in order; "
                    "AdvBN supports timm ResNet-family backbones"
                )
        model.train(was_training)
        for module in self.front:
            module.requires_grad_(False)
        for module in self.head:
            _dualise(module)
        return model

    def _frozen_front(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        for module in self.front:
            module.eval()
        with torch.no_grad():
            return run(self.front, (images - model.get_buffer("mean")) / model.get_buffer("std"))

    def perturb(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The inner maximisation over the per-channel factors (a, b); records the loss at every step."""
        mu = features.mean(dim=(0, 2, 3), keepdim=True)
        a = torch.ones_like(mu, requires_grad=True)
        b = torch.ones_like(mu, requires_grad=True)
        self.last_inner_losses = []

        def perturbed() -> torch.Tensor:
            out = (features - mu) * b + mu * a
            return F.relu(out) if self.relu else out

        heads_training = [m.training for m in self.head]
        for module in self.head:
            module.eval()
        for module in self.head:
            set_route(module, "adv")
        try:
            for _ in range(self.steps):
                loss = self.loss(_Seq(self.head), perturbed(), labels)
                grad_a, grad_b = torch.autograd.grad(loss, [a, b])
                self.last_inner_losses.append(loss.item())
                with torch.no_grad():
                    a.add_(self.step_size * grad_a.sign()).clamp_(1 - self.eps, 1 + self.eps)
                    b.add_(self.step_size * grad_b.sign()).clamp_(1 - self.eps, 1 + self.eps)
            with torch.no_grad():
                adv = perturbed()
                if self.steps:
                    self.last_inner_losses.append(self.loss(_Seq(self.head), adv, labels).item())
        finally:
            for module, training in zip(self.head, heads_training, strict=True):
                module.train(training)
        self.last_factors = (a.detach(), b.detach())
        return adv.detach()

    def training_step(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        features = self._frozen_front(model, images)
        adv = self.perturb(features, labels) if self.adv_weight else None
        optimizer.zero_grad(set_to_none=True)
        head = _Seq(self.head)
        for module in self.head:
            set_route(module, "clean")
        clean_loss = self.loss(head, features, labels)
        loss = clean_loss
        logs = {"clean_loss": clean_loss.item()}
        if adv is not None:
            for module in self.head:
                set_route(module, "adv")
            adv_loss = self.loss(head, adv, labels)
            loss = clean_loss + self.adv_weight * adv_loss
            logs["adv_loss"] = adv_loss.item()
            for module in self.head:
                set_route(module, "clean")
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), **logs}

    # -- inference --------------------------------------------------------------------------------------
    def eval_mode(self, model: nn.Module) -> nn.Module:
        set_route(model, self.branch)
        return model.eval()

    def inference_model(self, model: nn.Module) -> nn.Module:
        """A plain recognizer with the chosen BN branch folded back in place of each dual BN."""
        keys = set(model.state_dict())

        def source(key: str) -> str:  # a dual BN's ``prefix.leaf`` is ``prefix.<branch>.leaf`` in the model
            prefix, _, leaf = key.rpartition(".")
            return key if key in keys else f"{prefix}.{self.branch}.{leaf}"

        return plain_recognizer(model, source)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cut_after": self.cut,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "adv_weight": self.adv_weight,
            "relu": self.relu,
            "inference_bn_branch": self.branch,
            "trained": "head only (front frozen, BN eval)",
        }


class _Seq(nn.Module):
    """Run a list of modules in order without re-registering them as children."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self._mods = modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run(self._mods, x)


def _dualise(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` (or ``module`` itself if a child) by a DualBatchNorm2d."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DualBatchNorm2d(child))
        elif not isinstance(child, DualBatchNorm2d):
            _dualise(child)
