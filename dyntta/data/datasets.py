"""Data sets behind one interface: uint8 (N, 3, S, S) image tensors, int64 labels and class names.

Supported sources:
- ``fashion-mnist``: the IDX files installed by the Debian package ``dataset-fashion-mnist``;
- ``cifar10`` / ``cifar100``: the "python version" batch directories as distributed;
- ``imagefolder``: one sub-folder per class (optionally under ``train/`` and ``test/``).

Images are held in memory at the model's input size (32 px Fashion-MNIST: 215 MB for all 70k images),
which keeps CPU training free of data-loader overhead.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dyntta import contract
from dyntta.contract import IMAGE_SUFFIXES, DatasetNotFoundError, find_class_images
from dyntta.data.cache import converted
from dyntta.data.preprocess import RESIZE, Preprocess, to_model_input
from dyntta.data.transforms import arrays_to_model_input
from dyntta.registry import Registry

FASHION_MNIST_CLASSES = list(contract.FASHION_MNIST_CLASSES)
FASHION_MNIST_DEFAULT_DIR = contract.FASHION_MNIST_DIR
FASHION_MNIST_ENV = contract.FASHION_MNIST_ENV
DATA_DIR_ENV = "DYNTTA_DATA_DIR"
SPLITS = ("train", "test")


#: ``loader(split, image_size, root, preprocess)``; ``root`` None means the loader's environment variable or
#: default place; ``preprocess`` is how each image becomes ``image_size`` x ``image_size``.
Loader = Callable[[str, int, "str | os.PathLike[str] | None", Preprocess], "LabelledImages"]
DATASETS: Registry[Loader] = Registry("data set")
"""Every loadable data set, registered by decorator beside its loader (names are case-insensitive and
treat ``-`` and ``_`` alike)."""


@dataclass
class LabelledImages:
    """A split of a data set, in memory."""

    name: str
    split: str
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: torch.Tensor | np.ndarray[Any, Any] | list[int]) -> LabelledImages:
        index = torch.as_tensor(indices, dtype=torch.long)
        return LabelledImages(self.name, self.split, self.images[index], self.labels[index], self.classes)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    image_size: int = 32,
    root: str | os.PathLike[str] | None = None,
    preprocess: Preprocess | None = None,
) -> LabelledImages:
    """Load one split of a data set at ``image_size`` x ``image_size`` RGB.

    ``root`` overrides where the files are; otherwise ``DYNTTA_FASHION_MNIST_DIR`` (Fashion-MNIST) or
    ``DYNTTA_DATA_DIR`` is used, then the default location. ``preprocess`` is the recognizer's policy
    (``recognizer.config.preprocess``); ``None`` is plain resize, the legacy policy. The built-in data
    sets are square, so only ImageFolder images can differ between policies.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return DATASETS.get(name)(split, image_size, root, preprocess or RESIZE)


# --- Fashion-MNIST (IDX) -------------------------------------------------------------------------------


@DATASETS.register("fashion-mnist", aliases=("fashionmnist",))
def _fashion_mnist(split: str, size: int, root: str | os.PathLike[str] | None, policy: Preprocess) -> LabelledImages:
    images_path, labels_path = contract.fashion_mnist_files(split, root)
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))

    def convert() -> torch.Tensor:
        return arrays_to_model_input(read_idx(images_path), size, policy)

    images = converted(f"fashion-mnist-{split}", [images_path], size, policy, convert)
    return LabelledImages("fashion-mnist", split, images, labels, list(FASHION_MNIST_CLASSES))


def read_idx(path: Path) -> np.ndarray[Any, Any]:
    """Read an IDX file (optionally gzipped); numpy has no IDX reader and the format is 10 lines of code."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# --- CIFAR-10 / CIFAR-100 python batches ---------------------------------------------------------------


@DATASETS.register("cifar10", aliases=("cifar-10",))
def _cifar10(split: str, size: int, root: str | os.PathLike[str] | None, policy: Preprocess) -> LabelledImages:
    return _cifar("cifar10", split, size, root, policy)


@DATASETS.register("cifar100", aliases=("cifar-100",))
def _cifar100(split: str, size: int, root: str | os.PathLike[str] | None, policy: Preprocess) -> LabelledImages:
    return _cifar("cifar100", split, size, root, policy)


def _cifar(key: str, split: str, size: int, root: str | os.PathLike[str] | None, policy: Preprocess) -> LabelledImages:
    default = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
    directory = Path(root or os.environ.get(DATA_DIR_ENV) or Path.cwd() / "data" / default)
    if key == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta, label_key, names_key = "batches.meta", b"labels", b"label_names"
    else:
        files = ["train"] if split == "train" else ["test"]
        meta, label_key, names_key = "meta", b"fine_labels", b"fine_label_names"
    missing = [f for f in [*files, meta] if not (directory / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{key} batch files {missing} not found in {directory}: extract the 'python version' archive "
            f"there or pass --data-dir / {DATA_DIR_ENV}"
        )
    batches = [_unpickle(directory / file) for file in files]
    labels = [label for batch in batches for label in batch[label_key]]
    classes = [c.decode() for c in _unpickle(directory / meta)[names_key]]

    def convert() -> torch.Tensor:
        arrays = [np.asarray(b[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) for b in batches]
        return arrays_to_model_input(np.concatenate(arrays), size, policy)

    images = converted(f"{key}-{split}", [directory / f for f in files], size, policy, convert)
    return LabelledImages(key, split, images, torch.tensor(labels, dtype=torch.int64), classes)


def _unpickle(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as fh:
        batch: dict[bytes, Any] = pickle.load(fh, encoding="bytes")
    return batch


# --- ImageFolder ---------------------------------------------------------------------------------------


@DATASETS.register("imagefolder", aliases=("image-folder",))
def _imagefolder(split: str, size: int, root: str | os.PathLike[str] | None, policy: Preprocess) -> LabelledImages:
    if root is None and not os.environ.get(DATA_DIR_ENV):
        raise DatasetNotFoundError(f"--data imagefolder needs --data-dir DIR (or {DATA_DIR_ENV}=DIR)")
    return _image_folder(Path(root or os.environ[DATA_DIR_ENV]), split, size, policy)


def _image_folder(directory: Path, split: str, size: int, policy: Preprocess = RESIZE) -> LabelledImages:
    if not directory.is_dir():
        raise DatasetNotFoundError(f"ImageFolder directory {directory} does not exist")
    split_dir = directory / split
    if split == "test" and not split_dir.is_dir():
        split_dir = directory / "val"
    if not split_dir.is_dir():
        split_dir = directory  # a single folder serves every split (e.g. an evaluation set)
    classes, files = find_class_images(split_dir)
    if not files:
        raise DatasetNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in class sub-folders of {split_dir}"
        )
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(files, desc=f"reading {split_dir}", disable=len(files) < 1000)):
        with Image.open(path) as img:
            images[i] = to_model_input(img, size, policy)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return LabelledImages(f"imagefolder:{directory}", split, tensor, labels, classes)


def split_validation(data: LabelledImages, fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """Split a training set into (train, validation) with a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)
    n_val = int(round(len(data) * fraction))
    train, val = data.subset(order[n_val:]), data.subset(order[:n_val])
    val.split = "val"
    return train, val
