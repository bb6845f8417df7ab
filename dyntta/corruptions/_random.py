"""Random numbers keyed per image.

Each image gets its own random streams, seeded from a hash of (seed, global image index, corruption,
severity, stream id), so an image's corruption does not depend on which other images share its batch, on
their order, on chunking, or on the device.  The draws are made on the CPU (one torch.Generator per image
and stream; the loop over images is the price of per-image streams and costs about as much as the
sampling itself: a counter-based hash in torch ops measured 5-50x slower on CPU) and then moved to the
images' device, so CUDA inputs see exactly the same random fields as CPU ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK = 0xFFFFFFFF
_M1 = 0x21F0AAAD
_M2 = 0x735A2D97


def _mix32(x):  # works on Python ints and int64 tensors alike
    x = ((x ^ (x >> 16)) * _M1) & _MASK
    x = ((x ^ (x >> 15)) * _M2) & _MASK
    return x ^ (x >> 15)


def image_keys(seed: int, indices: Tensor, corruption_id: int, severity: int) -> Tensor:
    """One 32-bit key per image from (seed, global image index, corruption, severity)."""
    base = _mix32(_mix32(seed & _MASK) ^ _mix32(((seed >> 32) & _MASK) ^ 0x9E3779B9))
    base = _mix32(base ^ ((corruption_id << 8) | severity))
    idx = indices.to(torch.int64)
    keys = _mix32((idx & _MASK) ^ base)
    return _mix32(keys ^ _mix32((idx >> 32) & _MASK))


class ImageRandom:
    """Random tensors of shape (N, *shape); row n depends only on ``keys[n]`` and the stream id."""

    def __init__(self, keys: Tensor) -> None:
        self.keys = keys
        self.device = keys.device
        self._keys = [int(k) for k in keys.cpu().tolist()]

    def __len__(self) -> int:
        return len(self._keys)

    def _generators(self, stream: int) -> list[torch.Generator]:
        salt = _mix32((stream * 0x9E3779B1 + 0x632BE5AB) & _MASK)
        return [
            torch.Generator().manual_seed(_mix32(k ^ salt) << 32 | _mix32(k ^ salt ^ 0x5BD1E995)) for k in self._keys
        ]

    def _fill(self, shape: tuple[int, ...], stream: int, draw, dtype: torch.dtype = torch.float32, **kwargs) -> Tensor:
        out = torch.empty(len(self), *shape, dtype=dtype)
        for row, g in zip(out, self._generators(stream), strict=True):
            draw(size=shape, generator=g, out=row, **kwargs)
        return out.to(self.device)

    def uniform(self, shape: tuple[int, ...] = (), stream: int = 0) -> Tensor:
        """float32 uniform in [0, 1)."""
        return self._fill(shape, stream, torch.rand)

    def normal(self, shape: tuple[int, ...] = (), stream: int = 0, mean: float = 0.0, std: float = 1.0) -> Tensor:
        return self._fill(shape, stream, torch.randn) * std + mean

    def randint(self, low: int, high: int, shape: tuple[int, ...] = (), stream: int = 0) -> Tensor:
        """Integers in [low, high)."""
        return self._fill(shape, stream, torch.randint, torch.int64, low=low, high=high)

    def poisson(self, rate: Tensor, stream: int) -> Tensor:
        """Poisson samples for a per-element rate tensor of shape (N, ...): torch's CPU sampler, image by
        image with each image's own generator (measured ~17x cheaper than a vectorised PTRS in torch ops)."""
        rates = rate.detach().to("cpu", torch.float32)
        out = torch.empty_like(rates)
        for i, g in enumerate(self._generators(stream)):
            out[i] = torch.poisson(rates[i], generator=g)
        return out.to(rate.device)
