"""The corruption registry: each corruption function registers itself where it is defined.

    @register("gaussian_noise")
    def gaussian_noise(x, sigma, rng, table): ...

Only names of the contract's taxonomy (:data:`dyntta.contract.CORRUPTIONS`) can be registered; the
taxonomy, not the registration order, fixes each corruption's position (which keys its random numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dyntta.contract import CORRUPTIONS as NAMES
from dyntta.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

    from dyntta.corruptions._random import ImageRandom

#: ``fn(images (N, C, H, W) float in [0, 1], table parameters, per-image random numbers, table name)``.
CorruptionFn = Callable[["Tensor", Any, "ImageRandom", str], "Tensor"]

CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption", allowed=NAMES)
register = CORRUPTIONS.register
