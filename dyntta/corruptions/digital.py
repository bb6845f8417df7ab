"""Digital corruptions: contrast, elastic transform, pixelate, JPEG and (extra) saturate."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dyntta.corruptions import _ops
from dyntta.corruptions._random import ImageRandom
from dyntta.corruptions.registry import register
from dyntta.corruptions.tables import ELASTIC_UNIT


@register("contrast")
def contrast(x: Tensor, factor: float, rng: ImageRandom, table: str) -> Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the reference's axis=(0, 1)
    return ((x - mean) * factor + mean).clamp_(0, 1)


@register("saturate")
def saturate(x: Tensor, p: tuple[float, float], rng: ImageRandom, table: str) -> Tensor:
    """S' = clip(S * a + b) in HSV with H and V fixed.  Every channel satisfies V - c = V * S * g(H), so the
    round trip is c' = V - (V - c) * S'/S; grey pixels (S = 0, hue 0 by skimage's convention) become
    (V, V(1 - S'), V(1 - S')), i.e. reddish, exactly as the reference does."""
    if x.shape[1] == 1:  # the reference's grey path returns channel R = V unchanged
        return x.clone()
    scale, offset = p
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), 0.0)
    s_new = (s * scale + offset).clamp(0, 1)
    coloured = v - (v - x) * (s_new / s.clamp_min(1e-12))
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(delta > 0, coloured, grey).clamp_(0, 1)


@register("pixelate")
def pixelate(x: Tensor, factor: float, rng: ImageRandom, table: str) -> Tensor:
    """Pillow BOX down to int(size * factor), BOX back up (make_imagenet_c.py / make_cifar_c.py; the
    imagecorruptions packages upsample with NEAREST instead), as exact resampling matrices."""
    h, w = x.shape[-2:]
    small = _ops.pil_resize(x, (int(h * factor), int(w * factor)), "box")
    return _ops.pil_resize(small, (h, w), "box").clamp_(0, 1)


def _torchvision_jpeg():
    """torchvision's libjpeg codecs if this torchvision still has them (deprecated since 0.29)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg
    except ImportError:  # a future torchvision without image codecs: Pillow (same libjpeg bytes)
        return None
    return encode_jpeg, decode_jpeg


@register("jpeg_compression")
def jpeg_compression(x: Tensor, quality: int, rng: ImageRandom, table: str) -> Tensor:
    """libjpeg round trip at the given quality, 4:2:0: byte-identical to the reference's Pillow save/open.

    Inherently per image (a codec call per image).  torchvision's C++ codec loop is about 4x cheaper than
    Pillow per 32 px image; Pillow is the fallback.  Runs on CPU so CUDA inputs get the same bytes (nvjpeg
    would differ from libjpeg)."""
    n, c, h, w = x.shape
    u8 = torch.round(x.detach().float().cpu() * 255).clamp_(0, 255).to(torch.uint8).expand(n, 3, h, w)
    codecs = _torchvision_jpeg()  # grey is encoded as RGB, as the reference does
    if codecs is not None:
        encode, decode = codecs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = torch.stack(decode(encode(list(u8.contiguous().unbind(0)), quality=int(quality))))
    else:  # tests/corruptions/test_digital.py checks this path gives the same bytes
        arrays = u8.permute(0, 2, 3, 1).numpy()
        out = np.empty((n, h, w, 3), dtype=np.uint8)
        for i, array in enumerate(arrays):
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(array)).save(buffer, "JPEG", quality=int(quality))
            buffer.seek(0)
            with Image.open(buffer) as image:
                out[i] = np.asarray(image.convert("RGB"))
        decoded = torch.from_numpy(out).permute(0, 3, 1, 2)
    result = decoded.to(x.device, x.dtype) / 255
    return _ops.rgb_to_gray(result) if c == 1 else result


def _affine_source_coordinates(u: Tensor, h: int, w: int, spread: float) -> tuple[Tensor, Tensor]:
    """Per image, the source pixel coordinates of cv2.warpAffine(M) where M = getAffineTransform(pts1, pts2)
    and pts2 = pts1 + U(-spread, spread): three points around the centre moved at random (``u``: (N, 6)
    uniforms in [0, 1))."""
    device, n = u.device, u.shape[0]
    cx, cy, ss = w // 2, h // 2, min(h, w) // 3
    pts1 = torch.tensor(
        [[cx + ss, cy + ss], [cx + ss, cy - ss], [cx - ss, cy - ss]], dtype=torch.float64, device=device
    )
    jitter = (u.to(torch.float64).reshape(n, 3, 2) * 2 - 1) * spread
    pts2 = pts1[None] + jitter  # (N, 3, 2)
    # dst = M @ [src, 1]; warpAffine samples src = M^-1 dst.  Solve for the inverse map directly:
    # [pts2, 1] @ A = pts1, with A (3, 2).
    ones = torch.ones(n, 3, 1, dtype=torch.float64, device=device)
    inv = torch.linalg.solve(torch.cat([pts2, ones], dim=2), pts1[None].expand(n, 3, 2))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    grid = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)  # (HW, 3)
    src = grid[None] @ inv  # (N, HW, 2) as (x, y)
    return src[..., 0].reshape(-1, h, w), src[..., 1].reshape(-1, h, w)


def _sample(image: Tensor, xs: Tensor, ys: Tensor, align_corners: bool) -> Tensor:
    """Bilinear sampling at pixel coordinates with mirrored borders.

    align_corners=True mirrors about the edge pixel centres (OpenCV BORDER_REFLECT_101); False mirrors
    about the image border, i.e. scipy map_coordinates(mode='reflect', order=1)."""
    h, w = image.shape[-2:]
    if align_corners:
        gx, gy = 2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1
    else:
        gx, gy = (2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)


@register("elastic_transform")
def elastic_transform(x: Tensor, p: tuple[float, float, float], rng: ImageRandom, table: str) -> Tensor:
    """The ImageNet-C/CIFAR-10-C elastic transform: a random affine warp (reflect-101 borders), then a
    Gaussian-smoothed random displacement field (sigma, scaled by alpha; reflect) sampled bilinearly.
    Parameters are fractions of a size unit: the image side, times 244/224 for the ImageNet table (the
    reference's typo).  The imagecorruptions packages use a different, weaker formulation."""
    n, c, h, w = x.shape
    unit = ELASTIC_UNIT[table] * min(h, w)
    alpha, sigma, spread = (unit * float(v) for v in p)
    u = rng.uniform((6 + 2 * h * w,), stream=1)  # one draw per image: affine jitter, then the two fields
    xs, ys = _affine_source_coordinates(u[:, :6], h, w, spread)
    warped = _sample(x, xs, ys, align_corners=True)
    fields = u[:, 6:].reshape(n, 2, h, w) * 2 - 1
    smooth = _ops.gaussian_filter(fields, sigma, mode="reflect", truncate=3.0) * alpha  # float32, as there
    base_y, base_x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=x.device),
        torch.arange(w, dtype=torch.float32, device=x.device),
        indexing="ij",
    )
    out = _sample(warped, base_x[None] + smooth[:, 0], base_y[None] + smooth[:, 1], align_corners=False)
    return out.clamp_(0, 1)
