"""ImageNet-C / CIFAR-10-C corruptions as batched torch operations.

    from dyntta.corruptions import NAMES, corrupt
    out = corrupt(images, "gaussian_noise", 3, seed=0)  # (N, C, H, W) float in [0, 1], CPU or CUDA

- 19 corruptions (:data:`NAMES`: the 15 benchmark ones in ImageNet-C order, then 4 extras), severities 1-5.
- Two parameter tables, CIFAR-10-C (``"cifar"``) and ImageNet-C (``"imagenet"``); ``table=None`` picks by
  image size (:func:`default_table`: longer side <= 64 px -> CIFAR).
- Deterministic per (seed, global image index, corruption, severity): the same image gets the same
  corruption whatever the batch size or order (pass ``indices`` when a batch is not images 0..N-1), and
  CPU and CUDA draw the same random numbers.

The algorithms follow hendrycks/robustness ``make_imagenet_c.py`` / ``make_cifar_c.py``; where they differ
from the ``imagecorruptions`` packages, or from each other, docs/RESULTS.md ("Corruption suite") says how.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dyntta.corruptions import blur, digital, noise, weather  # noqa: F401  (importing registers them)
from dyntta.corruptions._random import ImageRandom, image_keys
from dyntta.corruptions.registry import CORRUPTIONS
from dyntta.corruptions.tables import (
    BENCHMARK_NAMES,
    EXTRA_NAMES,
    GROUPS,
    NAMES,
    SEVERITIES,
    TABLE_NAMES,
    TABLES,
    default_table,
)
from dyntta.corruptions.weather import frost_texture_source, set_frost_textures

#: Bump when any corruption's output changes for the same inputs; reports quote it.
IMPLEMENTATION_VERSION = "1"

MIN_SIZE = 32  # the reference rejects smaller images too; several kernels assume at least this much room


# Images are processed in chunks of about this many values: it bounds memory and keeps elementwise chains
# in cache.  Chunking cannot change results (every random number is keyed by image).  Glass blur's cost is
# a fixed number of Python steps per chunk, so it takes bigger chunks.
_CHUNK_VALUES = 1 << 22
_CHUNK_VALUES_GLASS = 1 << 25


def describe(table: str | None = None) -> str:
    """One line for report headers: implementation, version, table, frost textures."""
    tables = table or "cifar if the longer side <= 64 px, else imagenet"
    return (
        f"dyntta.corruptions v{IMPLEMENTATION_VERSION} (hendrycks/robustness algorithms, batched torch); "
        f"table: {tables}; frost textures: {frost_texture_source()}"
    )


def _check(images: Tensor, name: str, severity: int, table: str | None, indices: Tensor | None) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown corruption {name!r}; expected one of: {', '.join(NAMES)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an int in {SEVERITIES}, got {severity!r}")
    if table is not None and table not in TABLES:
        raise ValueError(f"unknown parameter table {table!r}; expected None (by image size) or one of {TABLE_NAMES}")
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor in [0, 1], got dtype {images.dtype} "
            "(convert uint8 with images.float() / 255)"
        )
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C in (1, 3), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"images must be at least {MIN_SIZE}x{MIN_SIZE} px, got {tuple(images.shape[-2:])}")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6 or lo != lo or hi != hi:
            raise ValueError(f"image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    if indices is not None:
        if indices.dim() != 1 or indices.shape[0] != images.shape[0] or indices.is_floating_point():
            raise ValueError(
                f"indices must be an integer tensor of shape ({images.shape[0]},), "
                f"got {indices.dtype} {tuple(indices.shape)}"
            )
        if indices.numel() and int(indices.min()) < 0:
            raise ValueError("indices must be non-negative")


def corrupt(
    images: Tensor, name: str, severity: int, *, seed: int = 0, table: str | None = None, indices: Tensor | None = None
) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch of (N, C, H, W) images in [0, 1].

    ``table``: ``"cifar"``, ``"imagenet"`` or None (by image size, see :func:`default_table`).
    ``indices``: the images' global indices in their data set (default 0..N-1); together with ``seed``
    they key every random draw, so a corrupted data set can be generated in any batch order.
    Returns a new tensor of the input's dtype and device, values in [0, 1] (not quantised).
    """
    _check(images, name, severity, table, indices)
    n, c, h, w = images.shape
    if n == 0:
        return images.clone()
    table = table or default_table(h, w)
    p = TABLES[table][name][severity - 1]
    fn = CORRUPTIONS.get(name)
    if indices is None:
        indices = torch.arange(n, device=images.device)
    keys = image_keys(
        int(seed) & 0xFFFFFFFFFFFFFFFF, indices.to(images.device, torch.int64), NAMES.index(name) + 1, severity
    )
    x = images.detach().to(torch.float32)
    budget = _CHUNK_VALUES_GLASS if name == "glass_blur" else _CHUNK_VALUES
    chunk = max(1, budget // max(1, c * h * w))
    if chunk >= n:
        return fn(x, p, ImageRandom(keys), table).to(images.dtype)
    out = torch.empty_like(images)
    for i in range(0, n, chunk):
        out[i : i + chunk] = fn(x[i : i + chunk], p, ImageRandom(keys[i : i + chunk]), table)
    return out


__all__ = [
    "BENCHMARK_NAMES",
    "CORRUPTIONS",
    "EXTRA_NAMES",
    "GROUPS",
    "IMPLEMENTATION_VERSION",
    "NAMES",
    "SEVERITIES",
    "TABLES",
    "TABLE_NAMES",
    "corrupt",
    "default_table",
    "describe",
    "frost_texture_source",
    "set_frost_textures",
]
