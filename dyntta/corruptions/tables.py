"""Severity parameter tables of the published corruption benchmarks.

``imagenet``: ImageNet-C, ``make_imagenet_c.py`` (224 px); ``cifar``: CIFAR-10-C, ``make_cifar_c.py`` (32 px),
both from github.com/hendrycks/robustness (Hendrycks & Dietterich, ICLR 2019).  Values follow those two
scripts; each entry lists severities 1..5.
The common pip packages apply the ImageNet table at every size, which is 2-10x too strong at 32 px; here the
table follows the image size unless chosen explicitly.
"""

from __future__ import annotations

import numpy as np

from dyntta.contract import BENCHMARK_CORRUPTIONS, CORRUPTION_GROUPS, CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES

#: The taxonomy lives in the contract (names, groups, order, severities); these are its names in this package.
NAMES: tuple[str, ...] = CORRUPTIONS
"""The 15 ImageNet-C corruptions in the benchmark's order, then the 4 validation extras."""
BENCHMARK_NAMES: tuple[str, ...] = BENCHMARK_CORRUPTIONS
EXTRA_NAMES: tuple[str, ...] = EXTRA_CORRUPTIONS
GROUPS: dict[str, tuple[str, ...]] = CORRUPTION_GROUPS
TABLE_NAMES: tuple[str, ...] = ("cifar", "imagenet")

#: Images whose longer side is at most this use the CIFAR table when ``table=None``; larger ones ImageNet.
SMALL_IMAGE_MAX_SIDE = 64


def _zooms(start: float, stop: float, step: float) -> tuple[float, ...]:
    # numpy's arange, as the reference: its floating-point end point decides whether `stop` is included
    return tuple(float(z) for z in np.arange(start, stop, step))


IMAGENET: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # sigma
    "shot_noise": (60, 25, 12, 5, 3),  # Poisson photons at full scale
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # salt-and-pepper fraction
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, alias sigma
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # sigma, delta, iters
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": (
        _zooms(1, 1.11, 0.01),
        _zooms(1, 1.16, 0.01),
        _zooms(1, 1.21, 0.02),
        _zooms(1, 1.26, 0.02),
        _zooms(1, 1.31, 0.03),
    ),
    # snow: mean, std, zoom, threshold, blur radius, blur sigma, image mix
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image weight, frost weight
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),  # strength, wibble decay
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor about the per-channel mean
    # elastic: (alpha, sigma, affine) as fractions of the size unit (244 px at 224: the reference's typo)
    "elastic_transform": ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # BOX downscale factor
    "jpeg_compression": (25, 18, 15, 10, 7),  # quality
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),  # multiplicative sigma
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma px
    # spatter: mean, std, blur sigma, threshold, intensity, mode (0 water, 1 mud)
    "spatter": (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # S * a + b
}

CIFAR: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": (
        _zooms(1, 1.06, 0.01),
        _zooms(1, 1.11, 0.01),
        _zooms(1, 1.16, 0.01),
        _zooms(1, 1.21, 0.01),
        _zooms(1, 1.26, 0.01),
    ),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

TABLES: dict[str, dict[str, tuple]] = {"cifar": CIFAR, "imagenet": IMAGENET}

#: Size unit of the elastic parameters relative to the image side: the ImageNet script multiplies by 244
#: where it meant 224 ("ultimately nothing is incorrect"), the CIFAR script by 32.
ELASTIC_UNIT = {"imagenet": 244 / 224, "cifar": 1.0}

#: Frost texture scale before cropping: the CIFAR script shrinks the textures by 5, ImageNet crops as is.
FROST_TEXTURE_SCALE = {"imagenet": 1.0, "cifar": 0.2}


def default_table(height: int, width: int) -> str:
    """The table an image of this size gets when ``table=None``."""
    return "cifar" if max(height, width) <= SMALL_IMAGE_MAX_SIDE else "imagenet"


def params(name: str, severity: int, table: str) -> object:
    """The parameter entry of one condition."""
    return TABLES[table][name][severity - 1]


__all__ = ["BENCHMARK_NAMES", "EXTRA_NAMES", "GROUPS", "NAMES", "SEVERITIES", "TABLES", "TABLE_NAMES", "default_table"]
