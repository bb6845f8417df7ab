"""The output warp: one affine transform of the whole blended image, with per-image parameters.

A blend of rotated or zoomed copies cannot undo a geometric shift (a mix of a tilted and an upright image is
neither); warping the blended output could: the predictor sees the shifted input and says how to bring it
back. Measured (docs/RESULTS.md, "An output warp for geometric shifts"): fitted through the recognizer's loss
alone, the warp stays at the identity (``benchmarks/warp_response.py``), so it is off by default.
Six raw parameters per image, 0 = the identity:

    angle = 60 deg tanh(m0)            shear = 0.6 tanh(m1)
    scale_x = 2^tanh(m2), scale_y = 2^tanh(m3)
    translation = 0.6 tanh(m4, m5)     (normalised coordinates, [-1, 1] across the image: 30 % of the side)

which cover the novel geometric shifts of :mod:`dyntta.shifts` (rotate 10-60 degrees, shear 0.1-0.6, scale
x1.15-2 either way, translate 5-30 %). Output pixel p (normalised, about the centre) samples the blended
image at A p + t with A = R(angle) [[1, shear], [0, 1]] diag(scale_x, scale_y), bilinearly, zero outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WARP_PARAMETERS = 6
MAX_ANGLE = math.radians(60.0)
MAX_SHEAR = 0.6
MAX_TRANSLATION = 0.6


def warp_matrix(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw parameters (B, 6) -> the sampling map: A (B, 2, 2) and t (B, 2), in normalised coordinates."""
    squashed = torch.tanh(m)
    angle, shear = MAX_ANGLE * squashed[:, 0], MAX_SHEAR * squashed[:, 1]
    scale_x, scale_y = torch.exp(math.log(2.0) * squashed[:, 2]), torch.exp(math.log(2.0) * squashed[:, 3])
    cos, sin = torch.cos(angle), torch.sin(angle)
    # R(angle) @ [[1, shear], [0, 1]] @ diag(scale_x, scale_y), written out
    a = torch.stack(
        [
            torch.stack([cos * scale_x, (cos * shear - sin) * scale_y], dim=1),
            torch.stack([sin * scale_x, (sin * shear + cos) * scale_y], dim=1),
        ],
        dim=1,
    )
    return a, MAX_TRANSLATION * squashed[:, 4:6]


def sample_affine(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) sampled at A p + t for every output pixel centre p (bilinear, zero fill)."""
    # The grid is built by hand, as in ops._affine: F.affine_grid exports to ONNX only from opset 20.
    b, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
    gy, gx = ys.view(1, h, 1), xs.view(1, 1, w)
    a, t = a.view(b, 2, 2, 1, 1), t.view(b, 2, 1, 1)
    grid_x = a[:, 0, 0] * gx + a[:, 0, 1] * gy + t[:, 0]
    grid_y = a[:, 1, 0] * gx + a[:, 1, 1] * gy + t[:, 1]
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The output warp of images ``x`` (B, C, H, W) with raw parameters ``m`` (B, 6); m = 0 is the identity."""
    return sample_affine(x, *warp_matrix(m))
