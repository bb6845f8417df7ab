"""Weather corruptions: snow, frost, fog, brightness and (extra) spatter."""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dyntta.corruptions import _ops
from dyntta.corruptions._random import ImageRandom
from dyntta.corruptions.registry import register
from dyntta.corruptions.tables import FROST_TEXTURE_SCALE

# --- snow ---------------------------------------------------------------------------------------------


@register("snow")
def snow(x: Tensor, p: tuple, rng: ImageRandom, table: str) -> Tensor:
    mean, std, zoom, threshold, radius, sigma, mix = p
    n, _, h, w = x.shape
    draws = rng.normal((h * w + 1,), stream=1)  # one draw per image: the layer, then the angle
    flakes = (draws[:, :-1] * std + mean).reshape(n, 1, h, w)
    flakes = _ops.clipped_zoom(flakes, float(zoom))
    flakes = torch.where(flakes < threshold, 0.0, flakes).clamp_(0, 1)
    angle = torch.special.ndtr(draws[:, -1]) * 90 - 135  # U(-135, -45) degrees: falling flakes
    flakes = _ops.motion_blur(flakes, int(radius), float(sigma), angle)
    flakes = torch.round(flakes * 255) / 255  # the reference's layer is an 8-bit image
    grey = _ops.rgb_to_gray(x)
    x = mix * x + (1 - mix) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + flakes + torch.flip(flakes, dims=(-2, -1))).clamp_(0, 1)


# --- frost --------------------------------------------------------------------------------------------

#: Per-channel mean and std (RGB, [0, 1]) of the five textures the reference draws from (randint(5) over
#: frost1..frost5; frost2 and frost3 are the same picture), measured on the imagecorruptions-imaug files.
#: The procedural textures reproduce these first two moments; their structure is synthetic.
FROST_TEXTURE_STATS = (
    ((0.305, 0.585, 0.650), (0.106, 0.065, 0.060)),
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    ((0.787, 0.805, 0.841), (0.084, 0.087, 0.089)),
    ((0.540, 0.599, 0.648), (0.112, 0.112, 0.117)),
    ((0.441, 0.484, 0.529), (0.174, 0.170, 0.163)),
)
_PROCEDURAL_SIZE = (480, 720)  # similar to the reference pictures (315x560 .. 600x900)

_frost_source: tuple[str, tuple[Path, ...]] = ("procedural", ())


def set_frost_textures(source: str | Sequence[str | Path] | None = None) -> None:
    """Choose frost textures for this process.

    ``None`` or ``"procedural"`` (default): five synthetic ice-crystal textures generated here.
    ``"imagecorruptions"``: frost1..frost5 from an installed ``imagecorruptions`` package (the original
    ImageNet-C pictures; their photographic provenance is undocumented, so they are not shipped with dyntta).
    A sequence of image paths: your own textures.
    """
    global _frost_source
    if source is None or source == "procedural":
        _frost_source = ("procedural", ())
    elif source == "imagecorruptions":
        try:  # an optional (dev) dependency: the original textures are not shipped with dyntta
            root = importlib.resources.files("imagecorruptions") / "frost"
        except ModuleNotFoundError as exc:
            raise ValueError("frost textures 'imagecorruptions' need the imagecorruptions package") from exc
        files = tuple(
            Path(str(root / f)) for f in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
        )
        _frost_source = ("imagecorruptions", files)
    elif isinstance(source, str):
        raise ValueError(
            f"unknown frost texture source {source!r}; expected None, 'procedural', "
            "'imagecorruptions' or a sequence of image paths"
        )
    else:
        files = tuple(Path(f) for f in source)
        missing = [str(f) for f in files if not f.is_file()]
        if not files or missing:
            raise ValueError(f"frost texture files missing: {missing or 'empty list'}")
        _frost_source = ("files", files)


def frost_texture_source() -> str:
    """A short description of the frost textures in use, for report headers."""
    kind, files = _frost_source
    return kind if kind == "procedural" else f"{kind}:{','.join(f.name for f in files)}"


@lru_cache(maxsize=8)
def _procedural_frost(index: int) -> Tensor:
    """A synthetic frost texture (3, H, W) in [0, 1]: needle-like ridges (one white noise filtered by
    elongated Gaussians in the Fourier domain at 8 orientations, blended by a smooth random orientation
    field) over a 1/f^2 cloudy background, scaled to the moments of the corresponding reference picture."""
    h, w = _PROCEDURAL_SIZE
    rng = ImageRandom(torch.tensor([0xF0057 + 7919 * index], dtype=torch.int64))
    noise = rng.normal((3, h, w), stream=1)[0]
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    radius = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))

    def filtered(spectrum: Tensor, response: Tensor) -> Tensor:
        field = torch.fft.irfft2(spectrum * response, s=(h, w))
        return (field - field.mean()) / field.std()

    spectra = torch.fft.rfft2(noise)
    background = filtered(spectra[0], radius**-2.0)
    orientation = filtered(spectra[1], torch.exp(-((radius / 0.004) ** 2))) * math.pi
    crystals = torch.zeros(h, w)
    weights_total = torch.zeros(h, w)
    for k in range(8):
        theta = k * math.pi / 8
        along = fx * math.cos(theta) + fy * math.sin(theta)
        across = -fx * math.sin(theta) + fy * math.cos(theta)
        needle = torch.exp(-0.5 * ((along / 0.012) ** 2 + (across / 0.2) ** 2))
        ridges = filtered(spectra[2], needle).clamp_min(0) ** 1.5
        weight = torch.exp(3.0 * torch.cos(2 * (orientation - theta)))
        crystals += weight * ridges
        weights_total += weight
    crystals /= weights_total
    pattern = 0.75 * (crystals - crystals.mean()) / crystals.std() + 0.45 * background
    pattern = (pattern - pattern.mean()) / pattern.std()
    mean, std = (torch.tensor(v)[:, None, None] for v in FROST_TEXTURE_STATS[index])
    return (mean + std * pattern[None]).clamp(0, 1)


@lru_cache(maxsize=32)
def _frost_bank(source: tuple[str, tuple[Path, ...]], scale: float) -> tuple[Tensor, ...]:
    kind, files = source
    if kind == "procedural":
        textures = [_procedural_frost(i) for i in range(len(FROST_TEXTURE_STATS))]
    else:
        textures = []
        for f in files:
            with Image.open(f) as img:
                textures.append(
                    torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255)
                    .permute(2, 0, 1)
                    .contiguous()
                )
    if scale != 1.0:  # cv2.resize(fx=fy=scale), INTER_LINEAR: no anti-aliasing, as the reference
        textures = [
            F.interpolate(
                t[None], scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False
            )[0]
            for t in textures
        ]
    return tuple(textures)


def _fit_texture(texture: Tensor, h: int, w: int) -> Tensor:
    """Upscale (bicubic) a texture smaller than the image so that a crop fits."""
    th, tw = texture.shape[-2:]
    if th > h and tw > w:
        return texture
    factor = max((h + 1) / th, (w + 1) / tw)
    size = (math.ceil(th * factor), math.ceil(tw * factor))
    return F.interpolate(texture[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 1)


@register("frost")
def frost(x: Tensor, p: tuple[float, float], rng: ImageRandom, table: str) -> Tensor:
    image_weight, frost_weight = p
    n, c, h, w = x.shape
    bank = _frost_bank(_frost_source, FROST_TEXTURE_SCALE[table])
    u = rng.uniform((3,), stream=1).to(torch.float64)  # texture, top, left
    choice = torch.floor(u[:, 0] * len(bank)).long().clamp_(0, len(bank) - 1)
    u_top, u_left = u[:, 1], u[:, 2]
    layer = torch.empty(n, 3, h, w, dtype=x.dtype, device=x.device)
    # a loop over the (five) textures, not over images: textures differ in size so they cannot be stacked
    for k, texture in enumerate(bank):
        sel = (choice == k).nonzero().flatten()
        if sel.numel() == 0:
            continue
        tex = _fit_texture(texture, h, w).to(x.device, x.dtype)
        th, tw = tex.shape[-2:]
        top = torch.floor(u_top[sel] * (th - h)).long()  # randint(0, th - h)
        left = torch.floor(u_left[sel] * (tw - w)).long()
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]
        layer[sel] = tex[:, rows, cols].permute(1, 0, 2, 3)
    if c == 1:
        layer = _ops.rgb_to_gray(layer)
    return (image_weight * x + frost_weight * layer).clamp_(0, 1)


# --- fog ----------------------------------------------------------------------------------------------


def plasma_fractal(rng: ImageRandom, size: int, decay: float, stream: int, dtype: torch.dtype) -> Tensor:
    """Diamond-square height maps (N, size, size) in [0, 1] with wrap-around, one per image, batched.

    As the reference: corner value 0, perturbation wibble * U(-wibble, wibble) with wibble starting at 100
    and divided by ``decay`` at every level, min-max normalised.  All the uniforms of an image are drawn
    in one call (per-image draws have a fixed cost) and consumed level by level.
    """
    n = len(rng)
    m = torch.zeros(n, size, size, dtype=dtype, device=rng.device)
    counts = []
    step = size
    while step >= 2:
        counts.append((size // step) ** 2)
        step //= 2
    u = rng.uniform((3 * sum(counts),), stream=stream).to(dtype) * 2 - 1
    step, wibble, offset = size, 100.0, 0

    def jitter(k: int) -> Tensor:
        nonlocal offset
        part = u[:, offset : offset + k * k].reshape(n, k, k) * (wibble * wibble)
        offset += k * k
        return part

    while step >= 2:
        half, k = step // 2, size // step
        corners = m[:, 0::step, 0::step]
        acc = corners + torch.roll(corners, -1, dims=1)
        acc = acc + torch.roll(acc, -1, dims=2)
        m[:, half::step, half::step] = acc / 4 + jitter(k)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        m[:, 0::step, half::step] = left / 4 + jitter(k)
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        m[:, half::step, 0::step] = top / 4 + jitter(k)
        step //= 2
        wibble /= decay
    m -= m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


@register("fog")
def fog(x: Tensor, p: tuple[float, float], rng: ImageRandom, table: str) -> Tensor:
    strength, decay = p
    h, w = x.shape[-2:]
    size = _ops.next_power_of_two(max(h, w))
    haze = plasma_fractal(rng, size, float(decay), stream=1, dtype=torch.float32)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * haze.to(x.dtype)) * peak / (peak + strength)).clamp_(0, 1)


# --- brightness (HSV value shift) -----------------------------------------------------------------------


@register("brightness")
def brightness(x: Tensor, shift: float, rng: ImageRandom, table: str) -> Tensor:
    """V += shift in HSV.  With hue and saturation fixed every channel is proportional to V, so the HSV
    round trip reduces to scaling the pixel by V'/V (a black pixel becomes grey V'): exact, no conversion."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + shift).clamp(max=1.0)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp_(0, 1)


# --- spatter (extra) -------------------------------------------------------------------------------------

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.t().contiguous()
_TG22 = 13573  # OpenCV's tan(22.5 deg) in 15-bit fixed point


def _shifted(padded: Tensor, pad: int, dy: int, dx: int) -> Tensor:
    """View of ``padded`` (padded by ``pad``) such that out[y, x] = original[y + dy, x + dx]."""
    h, w = padded.shape[-2] - 2 * pad, padded.shape[-1] - 2 * pad
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def canny(image: Tensor, low: float = 50, high: float = 150) -> Tensor:
    """OpenCV Canny (3x3 Sobel with replicated borders, L1 magnitude, 4-sector non-maximum suppression
    with its fixed-point sector test, hysteresis over 8-neighbours) on (N, 1, H, W) 8-bit valued floats.
    Returns a bool edge map."""
    padded = _ops.pad_index(image, 1, "nearest")
    gx = F.conv2d(padded, _SOBEL_X.to(image)[None, None]).to(torch.int64)
    gy = F.conv2d(padded, _SOBEL_Y.to(image)[None, None]).to(torch.int64)
    mag = gx.abs() + gy.abs()
    xs, ys = gx.abs(), gy.abs() << 15
    tg22 = xs * _TG22
    tg67 = tg22 + (xs << 16)
    horizontal = ys < tg22
    vertical = ~horizontal & (ys > tg67)
    diagonal = ~horizontal & ~vertical
    s_neg = (gx ^ gy) < 0

    mag_padded = F.pad(mag, (1, 1, 1, 1), value=0)  # OpenCV keeps a zero border around the magnitudes

    def nb(dy: int, dx: int) -> Tensor:
        return _shifted(mag_padded, 1, dy, dx)

    keep = torch.where(horizontal, (mag > nb(0, -1)) & (mag >= nb(0, 1)), False)
    keep |= vertical & (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    diag_pos = (mag > nb(-1, -1)) & (mag > nb(1, 1))  # sign +: up-left and down-right
    diag_neg = (mag > nb(-1, 1)) & (mag > nb(1, -1))
    keep |= diagonal & torch.where(s_neg, diag_neg, diag_pos)
    candidate = keep & (mag > low)
    edges = candidate & (mag > high)
    for i in range(image.shape[-2] * image.shape[-1]):
        grown = candidate & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if i % 4 == 3 and torch.equal(grown, edges):
            break
        edges = grown
    return edges


_CHAMFER = (
    (1, 0, 1.0),
    (0, 1, 1.0),
    (-1, 0, 1.0),
    (0, -1, 1.0),
    (1, 1, 1.4),
    (1, -1, 1.4),
    (-1, 1, 1.4),
    (-1, -1, 1.4),
    (1, 2, 2.1969),
    (2, 1, 2.1969),
    (-1, 2, 2.1969),
    (-2, 1, 2.1969),
    (1, -2, 2.1969),
    (2, -1, 2.1969),
    (-1, -2, 2.1969),
    (-2, -1, 2.1969),
)


def chamfer_distance(sources: Tensor, limit: float) -> Tensor:
    """OpenCV distanceTransform(DIST_L2, 5) (5x5 chamfer: 1, 1.4, 2.1969) to the True pixels, exact up to
    ``limit`` (larger distances come back as ``limit``).  Parallel min-plus relaxation: after k rounds every
    distance reachable in k mask steps (each >= 1) is final, so ceil(limit) rounds suffice."""
    inf = 1e6
    d = torch.where(sources, 0.0, inf).to(torch.float32)
    for _ in range(math.ceil(limit)):
        padded = F.pad(d, (2, 2, 2, 2), value=inf)
        new = d.clone()
        for dy, dx, cost in _CHAMFER:
            torch.minimum(new, _shifted(padded, 2, dy, dx) + cost, out=new)
        if torch.equal(new, d):
            break
        d = new
    return d.clamp_(max=limit)


def equalize_hist(image: Tensor) -> Tensor:
    """OpenCV equalizeHist per image on (N, 1, H, W) integer-valued floats in [0, 255]."""
    n = image.shape[0]
    flat = image.reshape(n, -1).to(torch.int64)
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.int64, device=image.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).to(torch.int64).argmax(dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    cum = hist.cumsum(dim=1) - first_count
    scale = 255.0 / (total - first_count).clamp_min(1).to(torch.float64)
    lut = torch.round(cum.to(torch.float64) * scale).clamp_(0, 255)
    lut = torch.where(torch.arange(256, device=image.device)[None] < first, 0.0, lut)
    flat_image = (first_count == total).expand(n, 256)
    lut = torch.where(flat_image, first.to(torch.float64).expand(n, 256), lut)
    return lut.gather(1, flat).reshape(image.shape).to(image.dtype)


_EMBOSS = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
_WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise, RGB
_MUD = (63 / 255, 42 / 255, 20 / 255)


@register("spatter")
def spatter(x: Tensor, p: tuple, rng: ImageRandom, table: str) -> Tensor:
    mean, std, sigma, threshold, intensity, mode = p
    n, c, h, w = x.shape
    liquid = _ops.gaussian_filter(rng.normal((1, h, w), stream=1, mean=mean, std=std), sigma)
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    if mode == 0:  # water: edge-based shading of the puddles (the reference's OpenCV pipeline, batched)
        level = torch.floor(liquid * 255).clamp_(0, 255)  # astype(uint8)
        dist = chamfer_distance(canny(level), 20.0)
        dist = torch.floor(_ops.box_blur3(dist) + 1e-4).clamp_(0, 255)  # blur, astype(uint8)
        dist = equalize_hist(dist)
        dist = _ops.depthwise_conv2d(dist, _EMBOSS, "reflect101").clamp_(0, 255)  # filter2D to CV_8U
        dist = torch.round(_ops.box_blur3(dist))  # blur on uint8 rounds
        m = level * dist
        m = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * intensity
        color = torch.tensor(_WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        splash = m * color
        if c == 1:
            return (x + _ops.rgb_to_gray(splash.clamp(0, 1))).clamp_(0, 1)
        return (x + splash).clamp_(0, 1)
    mud = _ops.gaussian_filter((liquid > threshold).to(x.dtype), float(intensity))
    mud = torch.where(mud < 0.8, 0.0, mud)
    color = torch.tensor(_MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    stain = color * mud
    if c == 1:
        stain = _ops.rgb_to_gray(stain)
    return (x * (1 - mud) + stain).clamp_(0, 1)
