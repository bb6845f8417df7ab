"""Differentiable image operations of the enhancer's bank, batched with per-image magnitudes.

Every operation takes images (B, 3, H, W) in [0, 1] and, when parameterised, one raw magnitude per image
(B,) from the predictor. Each op squashes its raw magnitude into its own range such that a raw value of 0
is the identity (the published DynTTA code starts several ops far from identity).
Colour ops come from kornia; the rest are a few tensor lines each, written to export to ONNX without
per-image Python loops.

Differences from the published op bank (DynTTA, Enomoto et al. 2024), on purpose:
- ranges: brightness +-0.6 additive (as published); contrast exp(2 tanh m) in [0.14, 7.4] about the image
  mean (published: multiplicative x * 3 sigmoid(m)); saturation exp(1.6 tanh m) in [0.2, 5] (published
  5 sigmoid(m) in [0, 5]); hue pi tanh(m), +-180 degrees (published 2 tanh(m) radians, +-115 degrees);
  gamma exp(1.1 tanh m) in [0.33, 3] (published 3 sigmoid(m) in [0, 3]); sharpness exp(1.6 tanh m) in
  [0.2, 5] (published 10 sigmoid(m) in [0, 10]); equalize with 64 bins (published 256); invert is 1 - x
  (published: the batch-global maximum minus x, which makes outputs depend on other requests).
- clamps: the published brightness, contrast, gamma and saturation clamp their own outputs to [0, 1]
  before the blend; here only the blend is clamped (in the enhancer's forward). Of the four, only brightness
  and contrast can leave [0, 1]: kornia's ``adjust_gamma`` clamps its own output and saturation stays in
  range through HSV. Per-op clamps would change the committed enhancer's outputs and its exported model
  (trained without them). Measured on the committed enhancer (``python -m benchmarks.enhancer_clamps``: first
  500 test images, severity 3; docs/RESULTS.md, issue 17 section): they change 0.8-5.4 % of its predictions
  and cost up to 1.6 points (fog, frost; clean 93.8 -> 93.2 %); an earlier enhancer lost 15-25 points to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import kornia.enhance as KE
import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x


def brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Additive shift of up to +-0.6."""
    return x + 0.6 * torch.tanh(m).view(-1, 1, 1, 1)


def contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Scale about the per-image mean by exp(2 tanh m) in [0.14, 7.4] (undoes ImageNet-C's contrast)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * torch.exp(2.0 * torch.tanh(m)).view(-1, 1, 1, 1) + mean


def saturation(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return KE.adjust_saturation(x, torch.exp(1.6 * torch.tanh(m)))


def hue(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return KE.adjust_hue(x, math.pi * torch.tanh(m))


def gamma(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x ** g with g = exp(1.1 tanh m) in [0.33, 3]; clamped away from 0 so the gradient stays finite."""
    return KE.adjust_gamma(x.clamp_min(1e-4), torch.exp(1.1 * torch.tanh(m)))


_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


def sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL-style sharpness, factor exp(1.6 tanh m) in [0.2, 5] (1 = identity, < 1 smooths).

    PIL's smoothing kernel as a fixed depthwise conv, renormalised at the border (PIL leaves border pixels
    as they are); kornia builds the kernel at run time, which the ONNX exporter rejects.
    """
    kernel = _SMOOTH.to(x)
    smooth = F.conv2d(x, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
    smooth = smooth / F.conv2d(torch.ones_like(x[:, :1]), kernel.view(1, 1, 3, 3), padding=1)
    return smooth + torch.exp(1.6 * torch.tanh(m)).view(-1, 1, 1, 1) * (x - smooth)


def autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel min-max stretch."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-3)


def equalize(x: torch.Tensor, m: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation, straight-through for gradients.

    The CDF is read at each pixel's value through bin comparisons (no scatter, no per-image loop), so it
    exports to ONNX; kornia's equalize loops over images in Python.
    """
    b, c, h, w = x.shape
    flat = x.detach().reshape(b, c, h * w, 1)
    edges = torch.linspace(0.0, 1.0, bins + 1, device=x.device, dtype=x.dtype)[1:]
    cdf = (flat <= edges).float().mean(dim=2)  # (B, C, bins)
    index = (flat.squeeze(-1) * (bins - 1)).round().long().clamp(0, bins - 1)
    equalised = torch.gather(cdf, 2, index).reshape(b, c, h, w)
    return x + (equalised - x).detach()


def invert(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """1 - x: a per-image constant, unlike the published batch-global maximum (breaks batch independence)."""
    return 1.0 - x


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle`` (radians) and zoom by ``scale`` about the centre, zero fill."""
    # The sampling grid is built by hand: F.affine_grid exports only from ONNX opset 20.
    b, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
    gy, gx = ys.view(1, h, 1), xs.view(1, 1, w)
    cos = (torch.cos(angle) / scale).view(b, 1, 1)
    sin = (torch.sin(angle) / scale).view(b, 1, 1)
    grid = torch.stack([cos * gx - sin * gy, sin * gx + cos * gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Rotation by up to +-30 degrees."""
    return _affine(x, math.radians(30.0) * torch.tanh(m), torch.ones_like(m))


def scale(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Isotropic zoom by 1 + 0.3 tanh m."""
    return _affine(x, torch.zeros_like(m), 1.0 + 0.3 * torch.tanh(m))


def median3x3(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """3x3 median filter (reflect padding): removes impulse noise, which no op of the published bank does.

    The median of 9 values is the smallest of the top 5; topk exports to ONNX where median does not.
    """
    b, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel_size=3)  # (B, C*9, H*W)
    patches = patches.view(b, c, 9, h * w)
    return patches.topk(5, dim=2).values[:, :, 4].view(b, c, h, w)


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Op
    parameterised: bool


#: The spatial/colour part of the bank, in order. The frequency filters and the U-Net follow them.
OPS: tuple[OpSpec, ...] = (
    OpSpec("identity", identity, False),
    OpSpec("brightness", brightness, True),
    OpSpec("contrast", contrast, True),
    OpSpec("saturation", saturation, True),
    OpSpec("hue", hue, True),
    OpSpec("gamma", gamma, True),
    OpSpec("sharpness", sharpness, True),
    OpSpec("autocontrast", autocontrast, False),
    OpSpec("equalize", equalize, False),
    OpSpec("invert", invert, False),
    OpSpec("rotate", rotate, True),
    OpSpec("scale", scale, True),
    OpSpec("median3x3", median3x3, False),
)
