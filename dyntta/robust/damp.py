"""DAMP: Data Augmentation via Multiplicative Perturbations (Trinh et al., NeurIPS 2024).

Each step splits the batch into M micro-batches; micro-batch m sees the weights ``w * (1 + sigma * xi_m)``
with ``xi_m ~ N(0, I)`` drawn independently for every convolution / linear kernel and every normalisation
scale (biases and normalisation shifts stay clean, as in the official code's ``kernel``/``scale`` leaves). The
gradient is the mean over micro-batches of the gradient *with respect to the perturbed tensor* (the
official convention, no chain-rule factor ``1 + sigma * xi``); the optimizer then steps the clean weights,
with weight decay on the clean weights. Evaluation uses the clean weights.

The M micro-batches run in parallel inside one forward/backward of the whole batch, so a step costs what
an SGD step costs: convolutions become grouped convolutions over M stacked perturbed kernels, linear
layers batched matrix products, and BatchNorm normalises with the statistics of the whole batch (the
official configs use synchronised BatchNorm) before applying each micro-batch's perturbed scale. With
M = 1 (one noise draw per step) the modules run their plain kernels on the one perturbed tensor (normalisation
with its fused affine part), so the step costs an SGD step plus the draw.

Every normalisation scale is perturbed: BatchNorm, LayerNorm and GroupNorm (ViTs and ConvNeXts have no
BatchNorm). A module is patched only if its class's forward is known (torch's, timm's Conv2dSame with its
'SAME' padding, BatchNormAct2d with its activation, LayerNorm/LayerNorm2d); any other subclass with its own
forward is refused with an error naming it, rather than silently run as its base class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, Conv2dSame, LayerNorm2d
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers.padding import pad_same
from torch import nn

from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
Forward = Callable[[torch.Tensor], torch.Tensor]
#: normalisation statistics with an optional affine part: (x, scale, shift) -> y
Normalise = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def _largest_divisor_at_most(n: int, m: int) -> int:
    for d in range(min(n, m), 0, -1):
        if n % d == 0:
            return d
    return 1


def _micro_major(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, C, ...) with micro-batches contiguous along B -> (B/m, m*C, ...) for a grouped convolution."""
    b = x.shape[0] // m
    return x.reshape(m, b, *x.shape[1:]).transpose(0, 1).reshape(b, m * x.shape[1], *x.shape[2:])


def _batch_major(y: torch.Tensor, m: int) -> torch.Tensor:
    b, mc = y.shape[:2]
    return y.reshape(b, m, mc // m, *y.shape[2:]).transpose(0, 1).reshape(b * m, mc // m, *y.shape[2:])


class _Perturbed:
    """The perturbed copies of one module's scaled tensor: a (M, *shape) leaf whose gradient is kept."""

    def __init__(self, param: nn.Parameter, m: int, sigma: float) -> None:
        self.param = param
        #: the multiplicative factors 1 + sigma * xi, one set per micro-batch
        self.factor = torch.empty((m, *param.shape), device=param.device, dtype=param.dtype).normal_()
        self.factor.mul_(sigma).add_(1.0)
        self.value = (param.detach().unsqueeze(0) * self.factor).requires_grad_(True)


def _conv_forward(module: nn.Conv2d, perturbed: _Perturbed, m: int, same_padding: bool = False) -> Forward:
    if module.padding_mode != "zeros":
        raise ValueError(f"DAMP supports zero-padded convolutions only, not padding_mode={module.padding_mode!r}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if same_padding:  # timm Conv2dSame: TensorFlow 'SAME' padding, computed from the input size
            x = pad_same(x, list(module.kernel_size), list(module.stride), list(module.dilation))
        if m == 1:
            return F.conv2d(
                x, perturbed.value[0], module.bias, module.stride, module.padding, module.dilation, module.groups
            )
        weight = perturbed.value.reshape(m * module.out_channels, *module.weight.shape[1:])
        bias = module.bias.repeat(m) if module.bias is not None else None
        y = F.conv2d(
            _micro_major(x, m), weight, bias, module.stride, module.padding, module.dilation, module.groups * m
        )
        return _batch_major(y, m)

    return forward


def _linear_forward(module: nn.Linear, perturbed: _Perturbed, m: int) -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if m == 1:
            return F.linear(x, perturbed.value[0], module.bias)
        xs = x.reshape(m, -1, x.shape[-1])  # micro-batches are contiguous along the leading dimension
        y = torch.bmm(xs, perturbed.value.transpose(1, 2))
        if module.bias is not None:
            y = y + module.bias
        return y.reshape(*x.shape[:-1], module.out_features)

    return forward


def _batch_statistics(module: nn.modules.batchnorm._BatchNorm) -> Normalise:
    def normalise(x: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
        # Same statistics and running-average logic as nn.BatchNorm, the affine part given.
        momentum = 0.0 if module.momentum is None else module.momentum
        if module.training and module.track_running_stats and module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            if module.momentum is None:
                momentum = 1.0 / float(module.num_batches_tracked)
        use_batch = module.training or module.running_mean is None
        track = not module.training or module.track_running_stats
        return F.batch_norm(
            x,
            module.running_mean if track else None,
            module.running_var if track else None,
            scale,
            shift,
            use_batch,
            momentum,
            module.eps,
        )

    return normalise


def _norm_forward(
    module: nn.Module,
    perturbed: _Perturbed,
    m: int,
    normalise: Normalise,
    channels_last: bool,
    after: Forward | None = None,
) -> Forward:
    """Normalise without the affine part, then each micro-batch's perturbed scale and the clean shift.
    ``channels_last``: the scale's dimensions are the input's trailing ones (LayerNorm); else dimension 1.
    With one micro-batch the normaliser applies the scale and shift itself (one fused pass, not three)."""
    shift = getattr(module, "bias", None)  # the clean shift (None: no affine shift)
    shift = shift if isinstance(shift, torch.Tensor) else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        if m == 1:
            y = normalise(x, perturbed.value[0], shift)
            return after(y) if after is not None else y
        y = normalise(x, None, None).reshape(m, -1, *x.shape[1:])
        scale_dims = perturbed.value.dim() - 1
        if channels_last:
            shape = (m, 1) + (1,) * (x.dim() - 1 - scale_dims) + tuple(perturbed.value.shape[1:])
            bias_shape = tuple(perturbed.value.shape[1:])
        else:
            shape = (m, 1, x.shape[1]) + (1,) * (x.dim() - 2)
            bias_shape = (x.shape[1],) + (1,) * (x.dim() - 2)
        y = y * perturbed.value.reshape(shape)
        if shift is not None:
            y = y + shift.reshape(bias_shape)
        y = y.reshape(x.shape)
        return after(y) if after is not None else y

    return forward


def _patched_forward(name: str, module: nn.Module, perturbed: _Perturbed, m: int) -> Forward:
    """The micro-batched forward of a module whose weight DAMP perturbs. Only classes whose forward is
    known are patched (a subclass with its own forward would silently lose it); others are refused.
    (``isinstance`` and the exact class: the first types the module, the second is the rule.)"""
    kind = type(module)
    if isinstance(module, nn.Conv2d) and kind in (nn.Conv2d, Conv2dSame):
        return _conv_forward(module, perturbed, m, same_padding=kind is Conv2dSame)
    if isinstance(module, nn.Linear) and kind.forward is nn.Linear.forward:
        return _linear_forward(module, perturbed, m)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return _norm_forward(module, perturbed, m, _batch_statistics(module), channels_last=False)
    if isinstance(module, BatchNormAct2d) and kind is BatchNormAct2d:  # BatchNorm, then dropout and activation
        return _norm_forward(
            module,
            perturbed,
            m,
            _batch_statistics(module),
            channels_last=False,
            after=lambda y: module.act(module.drop(y)),
        )
    if isinstance(module, nn.LayerNorm) and kind in (nn.LayerNorm, TimmLayerNorm):  # the trailing normalized_shape
        return _norm_forward(
            module,
            perturbed,
            m,
            lambda x, scale, shift: F.layer_norm(x, module.normalized_shape, scale, shift, module.eps),
            channels_last=True,
        )
    if isinstance(module, LayerNorm2d) and kind is LayerNorm2d:  # timm: LayerNorm over the channels of NCHW
        return _norm_forward(
            module,
            perturbed,
            m,
            lambda x, scale, shift: F.layer_norm(
                x.permute(0, 2, 3, 1), module.normalized_shape, scale, shift, module.eps
            ).permute(0, 3, 1, 2),
            channels_last=False,
        )
    if isinstance(module, nn.GroupNorm) and kind is nn.GroupNorm:
        return _norm_forward(
            module,
            perturbed,
            m,
            lambda x, scale, shift: F.group_norm(x, module.num_groups, scale, shift, module.eps),
            channels_last=False,
        )
    raise ValueError(
        f"DAMP cannot perturb module {name!r} ({kind.__module__}.{kind.__qualname__}): its forward is not one "
        "DAMP knows how to run per micro-batch (supported: nn.Conv2d, timm Conv2dSame, nn.Linear, BatchNorm, "
        "timm BatchNormAct2d, LayerNorm, timm LayerNorm/LayerNorm2d, GroupNorm)"
    )


def perturbable_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose kernel / scale DAMP (and SAM/ASAM) perturb: convolutions, linear layers and the scale of
    every affine normalisation (BatchNorm, LayerNorm, GroupNorm), subclasses included."""
    return [module for _, module, _ in _perturbable(model)]


def _perturbable(model: nn.Module) -> list[tuple[str, nn.Module, nn.Parameter]]:
    """(name, module, its kernel or scale) of every module DAMP perturbs."""
    out: list[tuple[str, nn.Module, nn.Parameter]] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        if isinstance(module, nn.Conv2d | nn.Linear) or (isinstance(module, NORM_TYPES) and weight is not None):
            out.append((name, module, weight))
        elif isinstance(module, nn.Conv1d | nn.Conv3d | nn.ConvTranspose2d):
            raise ValueError(f"DAMP cannot perturb module {name!r} ({type(module).__qualname__}): unsupported kind")
    return out


@contextlib.contextmanager
def multiplicative_noise(model: nn.Module, sigma: float, m: int) -> Iterator[list[_Perturbed]]:
    """Within the context, ``model`` runs M micro-batches in parallel, each with its own perturbed weights."""
    patched: list[tuple[nn.Module, _Perturbed]] = []
    try:
        for name, module, weight in _perturbable(model):
            perturbed = _Perturbed(weight, m, sigma)
            module.forward = _patched_forward(name, module, perturbed, m)
            patched.append((module, perturbed))
        yield [p for _, p in patched]
    finally:
        for module, _ in patched:
            del module.forward  # back to the class's forward


@register_strategy("damp")
class DAMP(TrainingStrategy):
    """Random multiplicative weight noise per micro-batch (``sigma`` = 0 is plain training)."""

    name = "damp"

    def __init__(self, label_smoothing: float = 0.0, sigma: float = 0.1, micro_batches: int = 8) -> None:
        super().__init__(label_smoothing)
        if sigma < 0:
            raise ValueError(f"DAMP sigma must be >= 0, got {sigma}")
        if micro_batches < 1:
            raise ValueError(f"DAMP micro_batches must be >= 1, got {micro_batches}")
        self.sigma = sigma
        self.micro_batches = micro_batches

    def training_step(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        # A batch not divisible by M (the last of an epoch) uses the largest M' <= M that divides it.
        m = _largest_divisor_at_most(len(images), self.micro_batches)
        with multiplicative_noise(model, self.sigma, m) as perturbed:
            # The mean loss over the batch is (1/M) sum_m L_m, so summing the gradients of the M perturbed
            # copies gives mean_m grad L_m(w * xi_m): the official gradient convention.
            loss = self.loss(model, images, labels)
            leaves = [p.value for p in perturbed] + _other_params(model, perturbed)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for p, g in zip(perturbed, grads[: len(perturbed)], strict=True):
            if g is not None and p.param.requires_grad:
                p.param.grad = g.sum(0)
        for param, g in zip(_other_params(model, perturbed), grads[len(perturbed) :], strict=True):
            if g is not None:
                param.grad = g
        optimizer.step()
        return {"loss": loss.item()}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sigma": self.sigma,
            "micro_batches": self.micro_batches,
            "perturbed": "conv/linear kernels and every normalisation scale (BatchNorm, LayerNorm, GroupNorm), "
            "N(1, sigma^2) per micro-batch",
            "gradient": "w.r.t. the perturbed tensors (official convention)",
            "batchnorm": "statistics of the whole batch (synchronised across micro-batches)",
        }


def _other_params(model: nn.Module, perturbed: list[_Perturbed]) -> list[nn.Parameter]:
    """Trainable parameters that carry no noise (biases, BatchNorm shifts, ...)."""
    noisy = {id(p.param) for p in perturbed}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in noisy]
