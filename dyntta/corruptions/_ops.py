"""Batched building blocks shared by the corruptions: linear filters as matrices, resampling, shifts.

Separable linear filters (Gaussian, PIL box resampling) are applied as dense per-axis matrices that already
contain the boundary rule: two batched matmuls whose cost does not depend on the kernel width, which
matters for the elastic transform's Gaussian (sigma up to 171 px at 224 px, far wider than the image).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: ITU-R BT.601 luma, as used by OpenCV's RGB2GRAY and the reference's rgb2gray.
LUMA = (0.299, 0.587, 0.114)


def boundary_index(n: int, positions: np.ndarray, mode: str) -> np.ndarray:
    """Map (possibly out-of-range) positions onto [0, n) following a scipy/OpenCV boundary rule.

    ``nearest``: edge replication; ``reflect``: half-sample symmetric (scipy 'reflect', OpenCV
    BORDER_REFLECT); ``reflect101``: mirror about the edge pixel (OpenCV BORDER_REFLECT_101).
    """
    p = np.asarray(positions, dtype=np.int64)
    if mode == "nearest":
        return np.clip(p, 0, n - 1)
    if mode == "reflect":
        p = np.mod(p, 2 * n)
        return np.where(p >= n, 2 * n - 1 - p, p)
    if mode == "reflect101":
        if n == 1:
            return np.zeros_like(p)
        p = np.mod(p, 2 * n - 2)
        return np.where(p >= n, 2 * n - 2 - p, p)
    raise ValueError(f"unknown boundary mode {mode!r}")


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's sampled Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * float(sigma) + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def correlation_matrix(n: int, kernel: np.ndarray, mode: str) -> np.ndarray:
    """(n, n) matrix M with (M @ v)[i] = sum_t kernel[t] * v[boundary(i + t - r)], r = len(kernel) // 2."""
    r = len(kernel) // 2
    rows = np.repeat(np.arange(n), len(kernel))
    cols = boundary_index(n, (np.arange(n)[:, None] + np.arange(-r, r + 1)[None, :]).ravel(), mode)
    m = np.zeros((n, n), dtype=np.float64)
    np.add.at(m, (rows, cols), np.tile(kernel, n))
    return m


@lru_cache(maxsize=256)
def _gaussian_matrix_np(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
    if sigma <= 1e-15:  # scipy skips axes with a vanishing sigma
        return np.eye(n)
    return correlation_matrix(n, gaussian_kernel1d(sigma, truncate), mode)


def _to_device(m: np.ndarray, like: Tensor) -> Tensor:
    return torch.from_numpy(m).to(device=like.device, dtype=like.dtype)


def apply_separable(x: Tensor, mh: Tensor, mw: Tensor) -> Tensor:
    """y = Mh @ x @ Mw^T over the last two dimensions."""
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


def gaussian_filter(x: Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """skimage.filters.gaussian / scipy gaussian_filter over H and W (default boundary 'nearest')."""
    h, w = x.shape[-2:]
    mh = _to_device(_gaussian_matrix_np(h, float(sigma), mode, truncate), x)
    mw = mh if w == h else _to_device(_gaussian_matrix_np(w, float(sigma), mode, truncate), x)
    return apply_separable(x, mh, mw)


def pad_index(x: Tensor, pad: int, mode: str) -> Tensor:
    """Pad the last two dimensions by ``pad`` with a boundary rule, for any pad size."""
    h, w = x.shape[-2:]
    ih = torch.from_numpy(boundary_index(h, np.arange(-pad, h + pad), mode)).to(x.device)
    iw = torch.from_numpy(boundary_index(w, np.arange(-pad, w + pad), mode)).to(x.device)
    return x.index_select(-2, ih).index_select(-1, iw)


def depthwise_conv2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel of (N, C, H, W) with one odd-sized 2-D kernel (OpenCV filter2D semantics)."""
    n, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    if mode == "reflect101" and r < min(h, w):  # torch's 'reflect' is reflect-101; faster than indexing
        padded = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    else:
        padded = pad_index(x, r, mode).reshape(n * c, 1, h + 2 * r, w + 2 * r)
    out = F.conv2d(padded, kernel.to(x)[None, None])
    return out.reshape(n, c, h, w)


def rgb_to_gray(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma; single-channel input is returned as is."""
    if x.shape[1] == 1:
        return x
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre by ``factor`` >= 1 keeping the size (reference clipped_zoom).

    scipy.ndimage.zoom(order=1) maps output pixel o to input o * (in - 1) / (out - 1): that is bilinear
    interpolation with aligned corners, output size round(in * factor).
    """
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    oh, ow = int(round(ch * factor)), int(round(cw * factor))
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[..., th : th + h, tw : tw + w]


#: Up to this many pixels, linear corruptions that are not separable are applied as one dense matrix.
DENSE_OPERATOR_MAX_PIXELS = 64 * 64


def clipped_zoom_matrix(n: int, factor: float) -> np.ndarray:
    """(n, n) matrix of :func:`clipped_zoom` along one axis (crop, aligned-corner linear zoom, trim)."""
    crop = math.ceil(n / factor)
    top = (n - crop) // 2
    out = int(round(crop * factor))
    trim = (out - n) // 2
    m = np.zeros((n, n), dtype=np.float64)
    if out == crop:
        m[np.arange(n), top + trim + np.arange(n)] = 1.0
        return m
    src = (np.arange(n) + trim) * (crop - 1) / (out - 1)
    lo = np.minimum(np.floor(src).astype(np.int64), crop - 1)
    hi = np.minimum(lo + 1, crop - 1)
    frac = src - lo
    np.add.at(m, (np.arange(n), top + lo), 1 - frac)
    np.add.at(m, (np.arange(n), top + hi), frac)
    return m


@lru_cache(maxsize=16)
def zoom_blur_operator(h: int, w: int, zooms: tuple[float, ...]) -> Tensor:
    """The zoom blur (x + sum_z zoom_z(x)) / (len(zooms) + 1) as one (HW, HW) float32 matrix."""
    op = np.eye(h * w)
    for z in zooms:
        op += np.kron(clipped_zoom_matrix(h, z), clipped_zoom_matrix(w, z))
    return torch.from_numpy(op / (len(zooms) + 1)).to(torch.float32)


def motion_blur(x: Tensor, radius: int, sigma: float, angle_deg: Tensor) -> Tensor:
    """Directional blur with a one-sided Gaussian of width 2 * radius + 1 along a per-image angle.

    Tap i reads the image shifted by (-ceil(i sin a - 0.5), -ceil(i cos a - 0.5)) with edge replication,
    the shift-and-add emulation of ImageMagick's MotionBlurImage used by imagecorruptions; taps whose
    shift leaves the image are dropped (not renormalised), as there.  Each tap is one batched
    nearest-neighbour grid_sample at exact integer offsets (border padding = edge replication), every
    image with its own angle.
    """
    n, c, h, w = x.shape
    width = 2 * radius + 1
    taps = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    i = torch.arange(width, device=x.device, dtype=torch.float64)
    rad = torch.deg2rad(angle_deg.to(torch.float64))
    dy = -torch.ceil(i[None] * torch.sin(rad)[:, None] - 0.5)  # (N, width), integers
    dx = -torch.ceil(i[None] * torch.cos(rad)[:, None] - 0.5)
    inside = (dy.abs() < h) & (dx.abs() < w)
    keep = torch.cumprod(inside.to(torch.int64), dim=1).bool()  # the reference stops at the first miss
    weights = (torch.from_numpy(taps).to(x.device)[None] * keep).to(x.dtype)
    ys = (2 * torch.arange(h, device=x.device, dtype=x.dtype) + 1) / h - 1  # pixel centres, align_corners=False
    xs = (2 * torch.arange(w, device=x.device, dtype=x.dtype) + 1) / w - 1
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, H, W, 2) as (x, y)
    out = torch.zeros_like(x)
    for t in range(width):
        if not bool(keep[:, t].any()):
            break
        shift = torch.stack([-dx[:, t] * 2 / w, -dy[:, t] * 2 / h], dim=-1).to(x.dtype)  # reads (h-dy, w-dx)
        grid = base + shift[:, None, None, :]
        tap = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
        out += weights[:, t, None, None, None] * tap
    return out


@lru_cache(maxsize=64)
def pil_resample_matrix(n_in: int, n_out: int, kind: str) -> np.ndarray:
    """(n_out, n_in) weights of Pillow's resize along one axis for the BOX or NEAREST filter.

    BOX follows Pillow's coefficient rule: output pixel o is centred at (o + 0.5) * scale in input
    coordinates; inputs whose centre falls in the support window (half-width 0.5 * max(scale, 1)) get
    weight 1, then the row is normalised.  NEAREST picks input int((o + 0.5) * scale).
    """
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if kind == "nearest":
        src = np.minimum(((np.arange(n_out) + 0.5) * scale).astype(np.int64), n_in - 1)
        m[np.arange(n_out), src] = 1.0
        return m
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - center + 0.5) / filterscale
            if -0.5 <= t < 0.5:
                m[o, i] = 1.0
        total = m[o].sum()
        if total > 0:
            m[o] /= total
    return m


def pil_resize(x: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    """Pillow-equivalent resize of (N, C, H, W) to (h, w), in float (no uint8 rounding)."""
    h, w = x.shape[-2:]
    mh = _to_device(pil_resample_matrix(h, size[0], kind), x)
    mw = _to_device(pil_resample_matrix(w, size[1], kind), x)
    return apply_separable(x, mh, mw)


def box_blur3(x: Tensor) -> Tensor:
    """OpenCV blur(ksize=(3, 3)) with its default BORDER_REFLECT_101."""
    mh = _to_device(correlation_matrix(x.shape[-2], np.full(3, 1 / 3), "reflect101"), x)
    mw = _to_device(correlation_matrix(x.shape[-1], np.full(3, 1 / 3), "reflect101"), x)
    return apply_separable(x, mh, mw)


def next_power_of_two(v: int) -> int:
    return 1 if v <= 1 else 1 << (v - 1).bit_length()
