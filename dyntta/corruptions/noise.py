"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

Each pixel of each channel gets independent noise, as in the reference (which draws over the H x W x 3 array).
"""

from __future__ import annotations

from torch import Tensor

from dyntta.corruptions._random import ImageRandom
from dyntta.corruptions.registry import register


@register("gaussian_noise")
def gaussian_noise(x: Tensor, sigma: float, rng: ImageRandom, table: str) -> Tensor:
    return (x + rng.normal(tuple(x.shape[1:]), stream=1, std=sigma)).clamp_(0, 1)


@register("shot_noise")
def shot_noise(x: Tensor, photons: float, rng: ImageRandom, table: str) -> Tensor:
    return (rng.poisson(x * photons, stream=1) / photons).clamp_(0, 1)


@register("impulse_noise")
def impulse_noise(x: Tensor, amount: float, rng: ImageRandom, table: str) -> Tensor:
    # skimage 's&p': each element is replaced with probability `amount`, half by 0 and half by 1
    u = rng.uniform(tuple(x.shape[1:]), stream=1)
    out = x.clone()
    out[u < amount] = 1.0
    out[u < amount / 2] = 0.0
    return out


@register("speckle_noise")
def speckle_noise(x: Tensor, sigma: float, rng: ImageRandom, table: str) -> Tensor:
    return (x + x * rng.normal(tuple(x.shape[1:]), stream=1, std=sigma)).clamp_(0, 1)
