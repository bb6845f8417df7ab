"""Noise corruptions: their statistics match the parameter tables."""

from __future__ import annotations

import torch

from dyntta.corruptions import corrupt
from dyntta.corruptions._random import ImageRandom, image_keys
from dyntta.corruptions.tables import CIFAR, IMAGENET

GREY = torch.full((8, 3, 32, 32), 0.5)


def test_gaussian_noise_sigma() -> None:
    sigma = CIFAR["gaussian_noise"][4]
    residual = corrupt(GREY, "gaussian_noise", 5) - GREY  # no clipping at 0.5 +- 5 sigma
    assert abs(float(residual.mean())) < 0.003
    assert abs(float(residual.std()) / sigma - 1) < 0.02


def test_shot_noise_is_poisson() -> None:
    photons = IMAGENET["shot_noise"][0]  # 60: rate 30 at grey 0.5
    counts = corrupt(GREY, "shot_noise", 1, table="imagenet") * photons
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # integer photon counts
    assert abs(float(counts.mean()) - 30) < 0.3 and abs(float(counts.var()) / 30 - 1) < 0.05


def test_impulse_noise_fractions() -> None:
    amount = IMAGENET["impulse_noise"][4]
    out = corrupt(GREY, "impulse_noise", 5, table="imagenet")
    assert abs(float((out == 0).float().mean()) - amount / 2) < 0.01
    assert abs(float((out == 1).float().mean()) - amount / 2) < 0.01
    assert bool(((out == 0) | (out == 1) | (out == 0.5)).all())


def test_speckle_noise_is_multiplicative() -> None:
    x = GREY.clone()
    x[:, :, :16] = 0.0
    out = corrupt(x, "speckle_noise", 2)
    assert torch.equal(out[:, :, :16], x[:, :, :16])  # black stays black
    sigma = CIFAR["speckle_noise"][1]
    assert abs(float((out[:, :, 16:] - 0.5).std()) / (0.5 * sigma) - 1) < 0.03


def test_streams_are_keyed_per_image() -> None:
    keys = image_keys(0, torch.arange(4), 1, 1)
    assert len(set(keys.tolist())) == 4
    a = ImageRandom(keys).normal((5,), stream=1)
    b = ImageRandom(keys[2:3]).normal((5,), stream=1)
    torch.testing.assert_close(a[2:3], b)
    assert not torch.equal(ImageRandom(keys).normal((5,), stream=2), a)
    assert not torch.equal(image_keys(1, torch.arange(4), 1, 1), keys)
    assert not torch.equal(image_keys(0, torch.arange(4), 1, 2), keys)
