"""Learn2Perturb (Jeddi et al., CVPR 2020): learned feature-noise injection plus adversarial training.

Noise modules add ``theta * eps`` to a feature map, with a learned scale map ``theta`` of shape (C, H, W)
(init 0.25) and ``eps ~ N(0, 1)`` of the same shape, drawn once per forward and shared by the batch. As in
the paper's ResNets they sit after the stem's conv+BN and after every residual addition, before the ReLU.

Training follows the paper's alternation, per batch:
1. weight step (theta fixed): ``L = CE(x)``, or ``0.5 CE(x) + 0.5 CE(x_adv)`` once adversarial training
   is on, where ``x_adv`` is PGD (eps 8/255, 7 steps of 0.01, random start) against the *predicted* labels;
2. noise step (weights fixed, only once the noise is on): the same loss with a fresh noise draw plus the
   regulariser ``R = -(gamma / H(e)) * sum(sqrt(theta))``, ``H(e)`` the harmonic number of the epochs since
   the noise came on (>= 1, which avoids the official code's division by zero);
3. ``theta <- max(theta, floor)`` after every step (floor 0.01).
The noise stays on in evaluation (independent of train/eval) and predictions average ``k`` draws.

Export: a plain recognizer cannot draw noise, so :meth:`inference_model` returns the deterministic mean
path (noise off); the learned scale maps are saved beside the checkpoint (``l2p_noise.safetensors``) and
:func:`load_noisy_recognizer` rebuilds the stochastic, k-sample-averaged model on the torch side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from dyntta.robust.attacks import pgd_linf
from dyntta.robust.plain import plain_recognizer, recognizer_config
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

NOISE_FILE = "l2p_noise.safetensors"


class NoiseInjection(nn.Module):
    """``x + theta * eps`` with one ``eps ~ N(0, 1)`` (C, H, W) per forward, shared across the batch."""

    def __init__(self, shape: tuple[int, ...], init: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full(shape, float(init)))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return x + self.theta * torch.randn_like(self.theta)


def injection_points(model: nn.Module) -> dict[str, nn.Module]:
    """The activations whose *input* receives noise: the stem's first activation and the activation after
    each residual addition (timm ResNet family: BasicBlock.act2, Bottleneck.act3)."""
    backbone = getattr(model, "backbone", model)
    points: dict[str, nn.Module] = {}
    stem = getattr(backbone, "act1", None)
    if isinstance(stem, nn.Module):
        points["stem"] = stem
    for name, module in backbone.named_modules():
        if isinstance(module, Bottleneck):
            points[name] = module.act3
        elif isinstance(module, BasicBlock):
            points[name] = module.act2
    if len(points) < 2:
        raise ValueError(
            "Learn2Perturb needs a timm ResNet-family backbone (stem act1 and residual blocks); "
            f"found injection points {sorted(points)} in {type(backbone).__name__}"
        )
    return points


def attach_noise(
    model: nn.Module, input_size: int, init: float, shapes: dict[str, tuple[int, ...]] | None = None
) -> nn.ModuleDict:
    """Insert noise modules (as forward pre-hooks on the injection points) and return them; the modules
    live in ``model.l2p_noise`` so they are trained, saved and resumed with the model."""
    points = injection_points(model)
    if shapes is None:
        shapes = {}
        probes = [
            point.register_forward_pre_hook(lambda _m, args, key=key: shapes.__setitem__(key, tuple(args[0].shape[1:])))
            for key, point in points.items()
        ]
        try:
            device = next(model.parameters()).device
            was_training = model.training
            with torch.no_grad():
                model.eval()(torch.zeros(1, 3, input_size, input_size, device=device))
            model.train(was_training)
        finally:
            for probe in probes:
                probe.remove()
    noise = {key: NoiseInjection(shapes[key], init) for key in points}
    modules = nn.ModuleDict({key.replace(".", "_"): module for key, module in noise.items()})
    model.l2p_noise = modules
    hooks = [point.register_forward_pre_hook(_injector(noise[key])) for key, point in points.items()]
    model._l2p_hooks = hooks  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    return modules


def noise_modules(model: nn.Module) -> dict[str, NoiseInjection]:
    """The noise modules :func:`attach_noise` put in ``model.l2p_noise``, by their name there."""
    noise = model.get_submodule("l2p_noise").named_children()
    return {name: module for name, module in noise if isinstance(module, NoiseInjection)}


def _injector(noise: NoiseInjection) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (noise(args[0]), *args[1:])

    return hook


def detach_noise(model: nn.Module) -> nn.Module:
    """Remove the noise modules and hooks in place (the deterministic mean path); returns ``model``."""
    for hook in getattr(model, "_l2p_hooks", []):
        hook.remove()
    if hasattr(model, "l2p_noise"):
        del model.l2p_noise
    if hasattr(model, "_l2p_hooks"):
        del model._l2p_hooks
    return model


def set_noise(model: nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, NoiseInjection):
            module.enabled = enabled


class SampleAveraged(nn.Module):
    """Log of the softmax averaged over ``k`` forward passes (Learn2Perturb's stochastic inference)."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k <= 1:
            return self.model(x)
        probs = torch.stack([F.softmax(self.model(x), dim=1) for _ in range(self.k)]).mean(0)
        return probs.clamp_min(1e-12).log()


def harmonic(n: int) -> float:
    return sum(1.0 / i for i in range(1, n + 1))


@register_strategy("l2p")
class Learn2Perturb(TrainingStrategy):
    """Learned feature noise + PGD adversarial training (``noise_init = noise_floor = gamma = 0`` with
    ``adv_start`` past the last epoch is plain training)."""

    name = "l2p"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        noise_init: float = 0.25,
        noise_floor: float = 0.01,
        gamma: float = 1e-4,
        noise_start: int = 0,
        adv_start: int = 1,
        adv_eps: float = 8 / 255,
        adv_steps: int = 7,
        adv_step_size: float = 0.01,
        eval_samples: int = 10,
        deterministic: bool = False,
        input_size: int = 32,
    ) -> None:
        super().__init__(label_smoothing)
        if noise_floor < 0 or noise_init < noise_floor:
            raise ValueError(f"need 0 <= noise_floor <= noise_init, got {noise_floor}, {noise_init}")
        if eval_samples < 1:
            raise ValueError("eval_samples must be >= 1")
        self.noise_init, self.noise_floor, self.gamma = noise_init, noise_floor, gamma
        self.noise_start, self.adv_start = noise_start, adv_start
        self.adv_eps, self.adv_steps, self.adv_step_size = adv_eps, adv_steps, adv_step_size
        self.eval_samples, self.deterministic, self.input_size = eval_samples, deterministic, input_size
        self.epoch = 0

    # -- model ------------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        size = getattr(getattr(model, "config", None), "input_size", self.input_size)
        attach_noise(model, size, self.noise_init)
        return model

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        noise = model.get_submodule("l2p_noise")
        noise_ids = {id(p) for p in noise.parameters()}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in noise_ids]
        return [{"params": weights}, {"params": list(noise.parameters()), "weight_decay": 0.0}]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch

    @property
    def noise_on(self) -> bool:
        return self.epoch >= self.noise_start

    @property
    def adversarial(self) -> bool:
        return self.epoch >= self.adv_start and self.adv_steps > 0 and self.adv_eps > 0

    # -- training ---------------------------------------------------------------------------------------
    def _loss(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, adv: torch.Tensor | None
    ) -> torch.Tensor:
        if adv is None:
            return self.loss(model, images, labels)
        return 0.5 * self.loss(model, images, labels) + 0.5 * self.loss(model, adv, labels)

    def regulariser(self, model: nn.Module) -> torch.Tensor:
        scale = self.gamma / max(1.0, harmonic(self.epoch - self.noise_start + 1))
        terms = [m.theta.clamp_min(0).sqrt().sum() for m in noise_modules(model).values()]
        return -scale * sum(terms[1:], terms[0])  # = the plain sum: 0 + terms[0] is terms[0]

    def training_step(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        set_noise(model, self.noise_on)
        noise_params = list(model.get_submodule("l2p_noise").parameters())
        noise_ids = {id(p) for p in noise_params}
        adv = None
        if self.adversarial:
            with torch.no_grad():
                was = model.training
                predicted = model.eval()(images).argmax(1)  # attack the prediction (no label leaking)
                model.train(was)
            adv = pgd_linf(
                model,
                images,
                predicted,
                eps=self.adv_eps,
                steps=self.adv_steps,
                step_size=self.adv_step_size,
                random_start=True,
            )
        # 1. weights, noise scales fixed
        optimizer.zero_grad(set_to_none=True)
        loss = self._loss(model, images, labels, adv)
        loss.backward()
        for p in noise_params:
            p.grad = None
        optimizer.step()
        logs = {"loss": loss.item()}
        if self.noise_on:
            # 2. noise scales, weights fixed; BatchNorm running statistics are left as step 1 set them
            bn_state = [
                (b, [t.clone() for t in b.buffers()])
                for b in model.modules()
                if isinstance(b, nn.modules.batchnorm._BatchNorm)
            ]
            optimizer.zero_grad(set_to_none=True)
            noise_loss = self._loss(model, images, labels, adv) + self.regulariser(model)
            noise_loss.backward()
            for p in model.parameters():
                if id(p) not in noise_ids:
                    p.grad = None
            optimizer.step()
            for bn, saved in bn_state:
                for buffer, value in zip(bn.buffers(), saved, strict=True):
                    buffer.copy_(value)
            logs["theta_mean"] = torch.cat([p.detach().flatten() for p in noise_params]).mean().item()
        return logs

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for p in model.get_submodule("l2p_noise").parameters():
                p.clamp_(min=self.noise_floor)

    # -- inference --------------------------------------------------------------------------------------
    def eval_mode(self, model: nn.Module) -> nn.Module:
        model.eval()
        if self.deterministic or not hasattr(model, "l2p_noise"):
            set_noise(model, False)
            return model
        set_noise(model, True)
        return SampleAveraged(model, self.eval_samples)

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The deterministic mean path as a plain recognizer (the noise maps go to ``save_artifacts``)."""
        return plain_recognizer(model)  # every key but the noise maps'

    def save_artifacts(self, model: nn.Module, directory: Path) -> list[str]:
        if not hasattr(model, "l2p_noise"):
            return []
        tensors = {k: m.theta.detach().cpu().contiguous() for k, m in noise_modules(model).items()}
        save_file(
            tensors,
            str(Path(directory) / NOISE_FILE),
            metadata={"eval_samples": str(self.eval_samples), "points": json.dumps(list(tensors))},
        )
        return [NOISE_FILE]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "noise_init": self.noise_init,
            "noise_floor": self.noise_floor,
            "gamma": self.gamma,
            "noise_start_epoch": self.noise_start,
            "adv_start_epoch": self.adv_start,
            "adv": {
                "eps": self.adv_eps,
                "steps": self.adv_steps,
                "step_size": self.adv_step_size,
                "labels": "predicted",
                "random_start": True,
            },
            "updates": "alternating: weights (theta fixed), then theta (weights fixed) + regulariser",
            "eval": "deterministic mean path"
            if self.deterministic
            else f"noise on, softmax averaged over {self.eval_samples} draws",
            "export": f"mean path (noise off); noise scales in {NOISE_FILE}",
        }


def load_noisy_recognizer(directory: str | os.PathLike, k: int | None = None) -> nn.Module:
    """Torch-side stochastic inference: the saved recognizer with its learned noise re-attached, returning
    the log of the softmax averaged over ``k`` noise draws (default: the recipe's ``eval_samples``)."""
    from dyntta.models import load_recognizer

    path = Path(directory) / NOISE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} was not trained with --method l2p")
    model = load_recognizer(directory)
    thetas = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    points = injection_points(model)
    keys = [key.replace(".", "_") for key in points]
    if sorted(keys) != sorted(thetas):
        raise ValueError(f"{path} holds noise maps {sorted(thetas)}, the model has points {sorted(keys)}")
    shapes = {key: tuple(thetas[key.replace(".", "_")].shape) for key in points}
    attach_noise(model, recognizer_config(model).input_size, 0.0, shapes=shapes)
    with torch.no_grad():
        for key, module in noise_modules(model).items():
            module.theta.copy_(thetas[key])
    return SampleAveraged(model.eval(), k or int(meta.get("eval_samples", 10)))
