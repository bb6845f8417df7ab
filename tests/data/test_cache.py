"""The disk cache of converted splits (dyntta/data/cache.py): a hit equals the conversion bit for bit, and any
change to what the conversion depends on is a miss."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dyntta.data import datasets, load_dataset
from dyntta.data.cache import CACHE_ENV
from dyntta.data.datasets import FASHION_MNIST_DEFAULT_DIR, read_idx
from dyntta.data.preprocess import RESIZE, Preprocess
from dyntta.data.transforms import arrays_to_model_input


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """A fresh cache directory; the list grows by one image count per real conversion."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calls: list[int] = []

    def counting(arrays: np.ndarray, size: int, policy: Preprocess = RESIZE) -> torch.Tensor:
        calls.append(len(arrays))
        return arrays_to_model_input(arrays, size, policy)

    monkeypatch.setattr(datasets, "arrays_to_model_input", counting)
    return calls


def _write_cifar10(directory: Path, seed: int, n: int = 3) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(directory / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [0] * n}, fh)
    with open(directory / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)


def test_a_hit_is_the_conversion_bit_for_bit(conversions: list[int], tmp_path: Path) -> None:
    first = load_dataset("fashion-mnist", "test")
    second = load_dataset("fashion-mnist", "test")
    assert conversions == [10_000]  # the second came from the cache
    raw = read_idx(FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(second.images, arrays_to_model_input(raw, 32)) and torch.equal(first.images, second.images)
    load_dataset("fashion-mnist", "test", image_size=40)  # another size: its own entry
    assert conversions == [10_000, 10_000]
    assert len(list((tmp_path / "cache").glob("fashion-mnist-test-*.npy"))) == 2


def test_changed_sources_are_a_miss_and_replace_the_stale_entry(conversions: list[int], tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _write_cifar10(root, seed=0)
    before = load_dataset("cifar10", "test", root=root)
    assert load_dataset("cifar10", "test", root=root).images.equal(before.images) and conversions == [3]
    _write_cifar10(root, seed=1, n=4)  # new pixels (and a new size, so the stat changes whatever the clock)
    after = load_dataset("cifar10", "test", root=root)
    assert conversions == [3, 4] and len(after) == 4 and not torch.equal(after.images[:3], before.images)
    assert len(list((tmp_path / "cache").glob("cifar10-test-*.npy"))) == 1  # the stale one is gone


def test_an_unreadable_entry_is_converted_again(conversions: list[int], tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _write_cifar10(root, seed=0)
    good = load_dataset("cifar10", "train", root=root)
    (entry,) = (tmp_path / "cache").glob("cifar10-train-*.npy")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as a killed writer could not leave it (atomic)
    again = load_dataset("cifar10", "train", root=root)
    assert conversions == [15, 15] and torch.equal(again.images, good.images)
    assert torch.equal(load_dataset("cifar10", "train", root=root).images, good.images) and conversions == [15, 15]


def test_off_converts_every_time_and_writes_nothing(
    conversions: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    root = tmp_path / "cifar"
    _write_cifar10(root, seed=0)
    load_dataset("cifar10", "test", root=root)
    load_dataset("cifar10", "test", root=root)
    assert conversions == [3, 3] and not (tmp_path / "cache").exists()
