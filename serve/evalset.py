"""Evaluation sets for robustness jobs: an uploaded ImageFolder zip, or the built-in Fashion-MNIST subset.

The zip is never extracted: members are read in memory, so a hostile name cannot write anywhere. Names
that would be unsafe to extract (absolute, ``..``, drive letters, symlinks) are refused all the same, since
such an archive is a mistake or an attack, and so are archives over the file-count or inflated-size limits
(checked from the central directory before anything is inflated, then enforced while reading, because the
directory can lie). Every other way an archive can be broken (a bad CRC, an encrypted member, a compression
zipfile cannot inflate, a truncated stream) is a 400 naming the member, never a 500.

An upload is decoded at submission, in the gateway, into a :class:`DecodedSet` (numpy, no torch): the
client learns about a bad archive at once, and workers get exactly the validated pixels.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from dyntta.contract import IMAGE_SUFFIXES as ZIP_IMAGE_SUFFIXES
from dyntta.contract import is_image_path
from dyntta.data.preprocess import RESIZE, Preprocess, to_model_input
from serve.errors import ApiError, BadRequest, PayloadTooLarge
from serve.imaging import PixelBudget, open_image

if TYPE_CHECKING:
    from dyntta.data import LabelledImages

BUILTIN_NAME = "builtin"
#: what zipfile can inflate; others (deflate64 = 9, PPMd, ...) raise NotImplementedError only when read
_READABLE = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2"}
_READABLE[zipfile.ZIP_LZMA] = "lzma"


@dataclass(frozen=True)
class ZipLimits:
    max_files: int
    max_uncompressed_bytes: int
    max_image_pixels: int
    #: pixels the whole archive may decode (charged from each image's header before it is decoded)
    max_total_pixels: int | None = None


@dataclass(frozen=True)
class DecodedSet:
    """An uploaded evaluation set, decoded and validated: what a worker evaluates."""

    name: str
    images: npt.NDArray[np.uint8]  # (N, S, S, 3), the model's input contract
    labels: npt.NDArray[np.int64]  # (N,), indices into ``classes``
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _normalise(label: str) -> str:
    return re.sub(r"[^0-9a-z]", "", label.lower())


def match_class(folder: str, labels: Sequence[str]) -> int | None:
    """Model label index for a class folder: exact, then case/punctuation-insensitive ("T-shirt_top"
    matches "T-shirt/top", which cannot be a folder name), then a plain index ("3")."""
    if folder in labels:
        return labels.index(folder)
    wanted = _normalise(folder)
    matches = [i for i, label in enumerate(labels) if wanted and _normalise(label) == wanted]
    if len(matches) == 1:
        return matches[0]
    # isdecimal, not isdigit: "²" is a digit that int() refuses
    if folder.isdecimal() and int(folder) < len(labels):
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


def _unreadable(info: zipfile.ZipInfo) -> str | None:
    if info.is_dir():
        return None
    if info.flag_bits & 0x1:
        return "encrypted; upload an archive without a password"
    if info.compress_type not in _READABLE:
        return (
            f"compression method {info.compress_type} is not supported (use {', '.join(_READABLE.values())}; "
            "method 9 is deflate64, which some Windows tools write)"
        )
    return None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, name: str) -> bytes:
    """A member's bytes; a corrupt member (bad CRC, broken stream, a lying header) is a 400 naming it."""
    try:
        with archive.open(info) as fh:
            return fh.read(limit)
    except NotImplementedError as exc:
        raise BadRequest(f"{name}: entry {info.filename!r} uses an unsupported compression ({exc})") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, RuntimeError) as exc:
        # bz2 raises OSError/ValueError on a broken stream; zipfile RuntimeError for a password it needs
        raise BadRequest(f"{name}: entry {info.filename!r} cannot be read ({exc})") from None


def read_imagefolder_zip(
    data: bytes,
    *,
    size: int,
    labels: Sequence[str],
    limits: ZipLimits,
    name: str = "upload.zip",
    policy: Preprocess = RESIZE,
) -> DecodedSet:
    """Zip of ``[root/]class/image`` files -> uint8 (N, size, size, 3), labelled by the model's classes and
    prepared with the served recognizer's preprocessing ``policy`` (what it was trained with)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError) as exc:
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
            if info.is_dir() or len(path.parts) < 2 or not is_image_path(path):
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
        for info, _ in files:  # refuse before inflating anything
            reason = _unreadable(info)
            if reason:
                raise BadRequest(f"{name}: refused entry {info.filename!r}: {reason}")

        images = np.empty((len(files), size, size, 3), dtype=np.uint8)
        pixels = PixelBudget(limits.max_image_pixels, limits.max_total_pixels or len(files) * limits.max_image_pixels)
        budget = limits.max_uncompressed_bytes
        for i, (info, _) in enumerate(files):
            blob = _read_member(archive, info, min(info.file_size, budget) + 1, name)
            if len(blob) > info.file_size or len(blob) > budget:
                raise PayloadTooLarge(f"{name}: entry {info.filename!r} inflates beyond its declared size")
            budget -= len(blob)
            try:
                with open_image(blob, max_pixels=limits.max_image_pixels, name=info.filename, budget=pixels) as image:
                    images[i] = to_model_input(image, size, policy)
            except ApiError as exc:
                raise type(exc)(f"{name}: {exc.message}") from None
    return DecodedSet(name, images, np.array([label for _, label in files], dtype=np.int64), list(labels))


def builtin_compatible(labels: Sequence[str]) -> bool:
    from dyntta.data.datasets import FASHION_MNIST_CLASSES

    return [_normalise(x) for x in labels] == [_normalise(x) for x in FASHION_MNIST_CLASSES]


def builtin_files() -> dict[str, Path]:
    """The Fashion-MNIST test files of the built-in set; DatasetNotFoundError if absent (checked at
    submission, so a gateway without the data answers 400 instead of queueing a job that must fail)."""
    from dyntta.contract import fashion_mnist_files

    images, labels = fashion_mnist_files("test")
    return {"t10k-images-idx3-ubyte": images, "t10k-labels-idx1-ubyte": labels}


def load_builtin(size: int, num_images: int) -> LabelledImages:
    """The first ``num_images`` of the Fashion-MNIST test split, converted exactly as ``load_dataset`` does
    (:func:`arrays_to_model_input`) but only those images, not all 10,000."""
    import torch

    from dyntta.data import LabelledImages, arrays_to_model_input
    from dyntta.data.datasets import FASHION_MNIST_CLASSES, read_idx

    found = builtin_files()
    raw = read_idx(found["t10k-images-idx3-ubyte"])[:num_images]
    labels = torch.from_numpy(read_idx(found["t10k-labels-idx1-ubyte"])[:num_images].astype(np.int64))
    return LabelledImages(
        "fashion-mnist", "test", arrays_to_model_input(raw, size), labels, list(FASHION_MNIST_CLASSES)
    )
