"""Evaluation sets for robustness jobs: an uploaded ImageFolder zip, or the built-in Fashion-MNIST subset.

The zip is never extracted: members are read in memory, so a hostile name cannot write anywhere. Names
that would be unsafe to extract (absolute, ``..``, drive letters, symlinks) are refused all the same, since
such an archive is a mistake or an attack, and so are archives over the file-count or inflated-size limits
(checked from the central directory before anything is inflated, then enforced while reading, because the
directory can lie).
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from dyntta.data import LabelledImages, arrays_to_model_input, to_model_input
from serve.errors import ApiError, BadRequest, PayloadTooLarge
from serve.imaging import open_image

ZIP_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
BUILTIN_NAME = "builtin"


@dataclass(frozen=True)
class ZipLimits:
    max_files: int
    max_uncompressed_bytes: int
    max_image_pixels: int


def _normalise(label: str) -> str:
    return re.sub(r"[^0-9a-z]", "", label.lower())


def match_class(folder: str, labels: Sequence[str]) -> int | None:
    """Model label index for a class folder: exact, then case/punctuation-insensitive ("T-shirt_top"
    matches "T-shirt/top", which cannot be a folder name), then a plain index ("3")."""
    if folder in labels:
        return labels.index(folder)
    wanted = _normalise(folder)
    matches = [i for i, label in enumerate(labels) if _normalise(label) == wanted]
    if len(matches) == 1:
        return matches[0]
    if folder.isdigit() and int(folder) < len(labels):
        return int(folder)
    return None


def _unsafe(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "path traversal ('..')"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def read_imagefolder_zip(
    data: bytes, *, size: int, labels: Sequence[str], limits: ZipLimits, name: str = "upload.zip"
) -> LabelledImages:
    """Zip of ``[root/]class/image`` files -> uint8 (N, 3, size, size), labelled by the model's classes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise BadRequest(f"{name}: not a readable zip archive ({exc})") from None
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_files:
            raise PayloadTooLarge(f"{name}: {len(members)} entries; at most {limits.max_files} are accepted")
        for info in members:
            reason = _unsafe(info)
            if reason:
                raise BadRequest(f"{name}: refused entry {info.filename!r}: {reason}")
        declared = sum(info.file_size for info in members)
        if declared > limits.max_uncompressed_bytes:
            raise PayloadTooLarge(f"{name}: inflates to {declared} bytes; the limit is {limits.max_uncompressed_bytes}")

        files: list[tuple[zipfile.ZipInfo, int]] = []
        unknown: set[str] = set()
        for info in members:
            path = PurePosixPath(info.filename.replace("\\", "/"))
            if info.is_dir() or path.suffix.lower() not in ZIP_IMAGE_SUFFIXES or len(path.parts) < 2:
                continue
            if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
                continue
            label = match_class(path.parent.name, labels)
            if label is None:
                unknown.add(path.parent.name)
            else:
                files.append((info, label))
        if unknown:
            raise BadRequest(f"{name}: class folders {sorted(unknown)} match none of the model's labels {list(labels)}")
        if not files:
            raise BadRequest(
                f"{name}: no images found; expected class_name/image.png entries "
                f"({', '.join(sorted(ZIP_IMAGE_SUFFIXES))})"
            )

        images = np.empty((len(files), size, size, 3), dtype=np.uint8)
        budget = limits.max_uncompressed_bytes
        for i, (info, _) in enumerate(files):
            with archive.open(info) as fh:
                blob = fh.read(min(info.file_size, budget) + 1)
            if len(blob) > info.file_size or len(blob) > budget:
                raise PayloadTooLarge(f"{name}: entry {info.filename!r} inflates beyond its declared size")
            budget -= len(blob)
            try:
                with open_image(blob, max_pixels=limits.max_image_pixels, name=info.filename) as image:
                    images[i] = to_model_input(image, size)
            except ApiError as exc:
                raise type(exc)(f"{name}: {exc.message}") from None
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    targets = torch.tensor([label for _, label in files], dtype=torch.int64)
    return LabelledImages(f"upload:{name}", "test", tensor, targets, list(labels))


def builtin_compatible(labels: Sequence[str]) -> bool:
    from dyntta.data.datasets import FASHION_MNIST_CLASSES

    return [_normalise(x) for x in labels] == [_normalise(x) for x in FASHION_MNIST_CLASSES]


def load_builtin(size: int, num_images: int) -> LabelledImages:
    """The first ``num_images`` of the Fashion-MNIST test split, converted exactly as ``load_dataset`` does
    (:func:`arrays_to_model_input`) but only those images, not all 10,000."""
    from dyntta.data.datasets import (
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_DEFAULT_DIR,
        FASHION_MNIST_ENV,
        DatasetNotFoundError,
        read_idx,
    )

    directory = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)
    found = {}
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        candidates = [directory / f"{stem}.gz", directory / stem]
        found[stem] = next((c for c in candidates if c.is_file()), None)
        if found[stem] is None:
            raise DatasetNotFoundError(
                f"the built-in evaluation set needs Fashion-MNIST ({stem}[.gz]) in "
                f"{directory}: apt-get install dataset-fashion-mnist or set "
                f"{FASHION_MNIST_ENV}"
            )
    raw = read_idx(found["t10k-images-idx3-ubyte"])[:num_images]
    labels = torch.from_numpy(read_idx(found["t10k-labels-idx1-ubyte"])[:num_images].astype(np.int64))
    return LabelledImages(
        "fashion-mnist", "test", arrays_to_model_input(raw, size), labels, list(FASHION_MNIST_CLASSES)
    )
