"""Novel shifts: image changes outside the 19-corruption suite the enhancer is trained on (issue 13 section 3).

    from dyntta.shifts import NOVEL_FAMILIES, NOVEL_SHIFTS, shift
    out = shift(images, "rotate", 3, seed=0)  # (N, C, H, W) float in [0, 1], CPU or CUDA

Kept apart from :mod:`dyntta.corruptions` on purpose: that taxonomy is frozen (its names key random numbers,
reports and the training recipe), and these shifts exist to measure what the enhancer never saw.

Families and severity tables (severities 1-5, strength rising with severity; sizes relative to the image):

- geometric (bilinear warp about the centre, zeros outside, the Fashion-MNIST background):
  ``rotate`` by :data:`ROTATE_DEGREES` with a random sign; ``shear`` along a random axis (x or y) by
  :data:`SHEAR_FACTORS` (tan of the shear angle) with a random sign; ``scale`` by :data:`SCALE_FACTORS`, zoom
  in or out (factor or its inverse) at random; ``translate`` by :data:`TRANSLATE_FRACTIONS` of the side in a
  random direction.
- occlusion (occluders black or white at random, each its own draw): ``lines``: :data:`LINE_COUNTS` straight
  lines :data:`LINE_WIDTH` of the shorter side wide, through random points at random angles; ``stripes``:
  parallel bars of period :data:`STRIPE_PERIOD` of the shorter side at a random angle and phase, covering
  :data:`STRIPE_DUTY` of the image; ``blotches``: :data:`BLOTCH_COUNTS` discs of radius :data:`BLOTCH_RADII`
  of the shorter side at random centres.
- appearance (no randomness): ``edges``: the Sobel gradient magnitude (per channel, x2 so a full-contrast step
  reads 1, clipped) blended over the image by :data:`EDGE_BLEND` (1 = edges only); ``invert``: blended with its
  negative by :data:`INVERT_BLEND` (severity 5 = ``1 - x`` exactly).

Deterministic per (seed, global image index, shift, severity) like the corruption suite, through the same
per-image random streams (:mod:`dyntta.corruptions._random`): batch size and order do not change an image's
result, and CPU and CUDA draw the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia
import torch
from torch import Tensor

from dyntta.corruptions._random import ImageRandom, image_keys

NOVEL_FAMILIES: dict[str, tuple[str, ...]] = {
    "geometric": ("rotate", "shear", "scale", "translate"),
    "occlusion": ("lines", "stripes", "blotches"),
    "appearance": ("edges", "invert"),
}
NOVEL_SHIFTS: tuple[str, ...] = tuple(name for names in NOVEL_FAMILIES.values() for name in names)
FAMILY_OF: dict[str, str] = {name: family for family, names in NOVEL_FAMILIES.items() for name in names}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

ROTATE_DEGREES = (10.0, 20.0, 30.0, 45.0, 60.0)
SHEAR_FACTORS = (0.1, 0.2, 0.3, 0.45, 0.6)
SCALE_FACTORS = (1.15, 1.3, 1.5, 1.75, 2.0)
TRANSLATE_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3)
LINE_COUNTS = (1, 2, 3, 5, 7)
LINE_WIDTH = 0.05
STRIPE_PERIOD = 0.25
STRIPE_DUTY = (0.1, 0.2, 0.3, 0.4, 0.5)
BLOTCH_COUNTS = (1, 2, 3, 4, 5)
BLOTCH_RADII = (0.1, 0.11, 0.12, 0.13, 0.14)
EDGE_BLEND = (0.2, 0.4, 0.6, 0.8, 1.0)
INVERT_BLEND = (0.2, 0.4, 0.6, 0.8, 1.0)

# Key ids 0x100 + i stay clear of the corruption suite's 1..19, so no shift shares a random stream with one.
_KEY_BASE = 0x100

Shift = Callable[[Tensor, int, ImageRandom], Tensor]


def _signs(rnd: ImageRandom, stream: int) -> Tensor:
    return torch.where(rnd.uniform(stream=stream) < 0.5, -1.0, 1.0)


def _warp(
    x: Tensor,
    angle: Tensor | None = None,
    scale: Tensor | None = None,
    shift_px: Tensor | None = None,
    shear: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One affine warp per image about the image centre (kornia); parameters default to the identity."""
    n, _, h, w = x.shape
    zeros = torch.zeros(n, device=x.device)
    center = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=x.device).expand(n, 2)
    scale2 = (torch.ones(n, device=x.device) if scale is None else scale)[:, None].expand(n, 2)
    sx, sy = shear if shear is not None else (None, None)
    matrix = kornia.geometry.transform.get_affine_matrix2d(
        zeros[:, None].expand(n, 2) if shift_px is None else shift_px,
        center,
        scale2.contiguous(),
        zeros if angle is None else angle,
        sx,
        sy,
    )
    return kornia.geometry.transform.warp_affine(x, matrix[:, :2], (h, w), padding_mode="zeros", align_corners=True)


def _rotate(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    return _warp(x, angle=ROTATE_DEGREES[severity - 1] * _signs(rnd, 0))


def _shear(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    angle = math.atan(SHEAR_FACTORS[severity - 1]) * _signs(rnd, 0)
    along_x = rnd.uniform(stream=1) < 0.5
    return _warp(x, shear=(torch.where(along_x, angle, 0.0), torch.where(along_x, 0.0, angle)))


def _scale(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    # zoom in (crops the object) or out (shrinks it on the background), each with the same log-magnitude
    return _warp(x, scale=SCALE_FACTORS[severity - 1] ** _signs(rnd, 0))


def _translate(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    h, w = x.shape[-2:]
    theta = 2 * math.pi * rnd.uniform(stream=0)
    frac = TRANSLATE_FRACTIONS[severity - 1]
    return _warp(x, shift_px=torch.stack([frac * w * theta.cos(), frac * h * theta.sin()], 1))


def _grid(x: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel-centre x (1, 1, 1, W) and y (1, 1, H, 1) relative to the image centre, to broadcast against
    per-occluder parameters of shape (N, K, 1, 1)."""
    h, w = x.shape[-2:]
    ys = torch.arange(h, device=x.device, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, device=x.device, dtype=torch.float32) - (w - 1) / 2
    return xs.view(1, 1, 1, w), ys.view(1, 1, h, 1)


def _paint(x: Tensor, masks: Tensor, colours: Tensor) -> Tensor:
    """Paint (N, K, H, W) boolean masks over ``x`` in order, occluder k in grey level ``colours[:, k]``."""
    out = x
    for k in range(masks.shape[1]):
        out = torch.where(masks[:, k : k + 1], colours[:, k, None, None, None], out)
    return out


def _colours(rnd: ImageRandom, k: int, stream: int) -> Tensor:
    return (rnd.uniform((k,), stream=stream) < 0.5).float()  # black or white: visible on any background


def _lines(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    k, side = LINE_COUNTS[severity - 1], min(x.shape[-2:])
    gx, gy = _grid(x)
    point = (rnd.uniform((k, 2), stream=0) - 0.5) * side  # a point each line passes through
    theta = math.pi * rnd.uniform((k,), stream=1)
    px, py = point[..., 0, None, None], point[..., 1, None, None]
    distance = ((gx - px) * theta.sin()[..., None, None] - (gy - py) * theta.cos()[..., None, None]).abs()
    return _paint(x, distance <= LINE_WIDTH * side / 2, _colours(rnd, k, 2))


def _stripes(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    side = min(x.shape[-2:])
    gx, gy = _grid(x)
    theta = math.pi * rnd.uniform((1,), stream=0)
    phase = rnd.uniform((1,), stream=1)
    along = gx * theta.cos()[..., None, None] + gy * theta.sin()[..., None, None]
    mask = torch.remainder(along / (STRIPE_PERIOD * side) + phase[..., None, None], 1.0) < STRIPE_DUTY[severity - 1]
    return _paint(x, mask, _colours(rnd, 1, 2))


def _blotches(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    k, side = BLOTCH_COUNTS[severity - 1], min(x.shape[-2:])
    gx, gy = _grid(x)
    centre = (rnd.uniform((k, 2), stream=0) - 0.5) * 0.7 * side  # inside the central 70%: few fall off the edge
    cx, cy = centre[..., 0, None, None], centre[..., 1, None, None]
    inside = (gx - cx) ** 2 + (gy - cy) ** 2 <= (BLOTCH_RADII[severity - 1] * side) ** 2
    return _paint(x, inside, _colours(rnd, k, 1))


def _edges(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    gradient = kornia.filters.spatial_gradient(x, mode="sobel", normalized=True)  # (N, C, 2, H, W)
    magnitude = (2 * torch.linalg.vector_norm(gradient, dim=2)).clamp(0, 1)
    return torch.lerp(x, magnitude, EDGE_BLEND[severity - 1])


def _invert(x: Tensor, severity: int, rnd: ImageRandom) -> Tensor:
    a = INVERT_BLEND[severity - 1]
    return (1 - a) * x + a * (1 - x)  # at a = 1 this is exactly 1 - x


SHIFTS: dict[str, Shift] = {
    "rotate": _rotate,
    "shear": _shear,
    "scale": _scale,
    "translate": _translate,
    "lines": _lines,
    "stripes": _stripes,
    "blotches": _blotches,
    "edges": _edges,
    "invert": _invert,
}


def _check(images: Tensor, name: str, severity: int, indices: Tensor | None) -> None:
    if name not in SHIFTS:
        raise ValueError(f"unknown novel shift {name!r}; expected one of: {', '.join(NOVEL_SHIFTS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in {SEVERITIES}, got {severity!r}")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError("images must be a float torch.Tensor in [0, 1] (convert uint8 with images.float() / 255)")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    if indices is not None and (indices.shape != (images.shape[0],) or indices.is_floating_point()):
        raise ValueError(
            f"indices must be an integer tensor of shape ({images.shape[0]},), got {indices.dtype} "
            f"{tuple(indices.shape)}"
        )


def shift(images: Tensor, name: str, severity: int, seed: int = 0, indices: Tensor | None = None) -> Tensor:
    """Apply novel shift ``name`` at ``severity`` (1-5) to (N, C, H, W) images in [0, 1].

    ``indices``: the images' global indices in their data set (default 0..N-1); with ``seed`` they key every
    random draw. Returns a new tensor of the input's dtype, shape and device, clamped to [0, 1].
    """
    _check(images, name, severity, indices)
    if images.shape[0] == 0:
        return images.clone()
    if indices is None:
        indices = torch.arange(images.shape[0])
    key_id = _KEY_BASE + NOVEL_SHIFTS.index(name)
    keys = image_keys(int(seed) & 0xFFFFFFFFFFFFFFFF, indices.to(images.device, torch.int64), key_id, severity)
    out = SHIFTS[name](images.detach().to(torch.float32), severity, ImageRandom(keys))
    return out.clamp(0, 1).to(images.dtype)


__all__ = ["FAMILY_OF", "NOVEL_FAMILIES", "NOVEL_SHIFTS", "SEVERITIES", "SHIFTS", "shift"]
