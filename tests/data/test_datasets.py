"""Data sets: real Fashion-MNIST IDX files, a CIFAR-format fixture, an ImageFolder, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyntta.data import DATASETS, DatasetNotFoundError, load_dataset, split_validation, to_model_input
from dyntta.data.datasets import FASHION_MNIST_DEFAULT_DIR, read_idx


def test_fashion_mnist_real_files(fmnist_test) -> None:
    assert fmnist_test.images.shape == (1000, 3, 32, 32)
    assert fmnist_test.images.dtype == torch.uint8
    assert fmnist_test.classes[0] == "T-shirt/top" and len(fmnist_test.classes) == 10
    assert torch.equal(fmnist_test.images[:, 0], fmnist_test.images[:, 2])  # grey -> 3 equal channels
    assert set(fmnist_test.labels.tolist()) == set(range(10))
    raw = read_idx(FASHION_MNIST_DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz")
    assert raw.shape == (10000,) and raw[0] == fmnist_test.labels[0]


def test_fashion_mnist_size_follows_request() -> None:
    data = load_dataset("fashion-mnist", "test", image_size=48)
    assert data.images.shape == (10000, 3, 48, 48)


def test_fashion_mnist_missing_gives_one_clear_line(tmp_path, monkeypatch) -> None:
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test", root=tmp_path)
    monkeypatch.setenv("DYNTTA_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        load_dataset("fashion-mnist", "train")


def _write_cifar10(directory: Path, n_per_batch: int = 4) -> np.ndarray:
    rng = np.random.default_rng(0)
    directory.mkdir()
    images = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        images.append(data)
        with open(directory / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": list(range(n_per_batch))}, fh)
    with open(directory / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, fh)
    return np.concatenate(images)


def test_cifar10_batches(tmp_path) -> None:
    raw = _write_cifar10(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", root=tmp_path / "cifar-10-batches-py")
    test = load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    assert len(train) == 20 and len(test) == 4
    assert train.classes[3] == "class3"
    # 32 px CIFAR images pass through unchanged: row-major channel planes -> (3, 32, 32)
    assert torch.equal(train.images[0], torch.from_numpy(raw[0].reshape(3, 32, 32)))


def test_cifar100_batches(tmp_path) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    for name, n in (("train", 6), ("test", 2)):
        with open(directory / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": [1] * n}, fh)
    with open(directory / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, fh)
    data = load_dataset("cifar100", "train", root=directory, image_size=40)
    assert data.images.shape == (6, 3, 40, 40) and len(data.classes) == 100


def test_cifar_missing_files(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="python version"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_image_folder(tmp_path) -> None:
    for split in ("train", "test"):
        for label, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (50 + i, 40), colour).save(tmp_path / split / label / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"macOS resource fork, not a PNG")
    (tmp_path / "train" / ".thumbnails").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / ".thumbnails" / "t.png")
    data = load_dataset("imagefolder", "train", root=tmp_path)
    assert data.classes == ["cat", "dog"] and len(data) == 6
    assert data.images.shape == (6, 3, 32, 32)
    assert data.images[0, 0].float().mean() == 255 and data.images[-1, 2].float().mean() == 255


def test_image_folder_empty_is_clear(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_dataset("imagefolder", "test", root=tmp_path)


def test_registry_names_and_aliases(tmp_path) -> None:
    assert DATASETS.names() == ("fashion-mnist", "cifar10", "cifar100", "imagefolder")
    assert DATASETS.canonical("Fashion_MNIST") == DATASETS.canonical("fashionmnist") == "fashion-mnist"
    _write_cifar10(tmp_path / "c")
    assert len(load_dataset("CIFAR_10", "test", root=tmp_path / "c")) == 4


def test_unknown_dataset_and_split() -> None:
    with pytest.raises(ValueError, match="unknown data set 'cifar-1000' \\(did you mean 'cifar100'\\?\\)"):
        load_dataset("cifar-1000")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("fashion-mnist", "validation")


def test_preprocessing_contract_is_one_function() -> None:
    """A grey 28x28 image goes through the same resize as the data set's loader."""
    grey = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    out = to_model_input(grey, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all()


def test_split_validation_is_seeded(fmnist_test) -> None:
    a, va = split_validation(fmnist_test, 0.1, seed=3)
    b, vb = split_validation(fmnist_test, 0.1, seed=3)
    assert len(va) == 100 and len(a) == 900
    assert torch.equal(va.labels, vb.labels) and va.split == "val"
