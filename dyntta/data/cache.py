"""A disk cache of converted data-set splits: the contract's conversion of every image, once per machine.

Converting Fashion-MNIST's 70,000 images to 32 px RGB through :func:`dyntta.data.to_model_input` (Pillow,
image by image, so that training data equals what the gateway makes of an upload) takes ~14 s, which every
training, evaluation, rank and job worker process paid again. The converted uint8 array is kept in
``$DYNTTA_CACHE_DIR`` (default ``$XDG_CACHE_HOME/dyntta``, else ``~/.cache/dyntta``; ``off`` disables it) under
a key of everything the result depends on: the source files (path, size, modification time), the output size,
the policy, Pillow's version and the source text of the contract's modules. A change to any of them is a miss,
never a stale hit, and the superseded file of the same split, size and policy is removed. Files are written to a
temporary name and renamed into place, so ranks that miss together each convert and one complete file wins; an
unreadable file is converted again. Written here rather than with ``joblib.Memory`` (not a dependency): its key
covers the memoised function's own code, not the contract functions it calls, which is the change that matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import PIL
import torch

from dyntta.data import preprocess, transforms
from dyntta.data.preprocess import Preprocess

CACHE_ENV = "DYNTTA_CACHE_DIR"


def cache_directory() -> Path | None:
    """Where converted splits are kept, or None when ``DYNTTA_CACHE_DIR=off``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured.lower() == "off" else Path(configured)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())
    return base / "dyntta" if base.is_absolute() else None  # no home directory (an arbitrary container uid)


def _contract_fingerprint() -> str:
    digest = hashlib.sha256()
    for module in (preprocess, transforms):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def cache_key(sources: Sequence[Path], size: int, policy: Preprocess) -> str:
    """A digest of everything the converted array depends on."""
    files = []
    for source in sources:
        stat = source.stat()
        files.append([str(source.resolve()), stat.st_size, stat.st_mtime_ns])
    identity = {
        "sources": files,
        "size": size,
        "policy": policy.to_dict(),
        "pillow": PIL.__version__,
        "contract": _contract_fingerprint(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def converted(
    name: str, sources: Sequence[Path], size: int, policy: Preprocess, convert: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """``convert()`` (uint8 (N, 3, size, size) images of the split ``name``, read from ``sources``), from the
    cache when an identical conversion is there, else computed and stored."""
    directory = cache_directory()
    if directory is None:
        return convert()
    # what a file replaces: the same split of the same files at the same size and policy, converted before
    where = json.dumps([[str(s.resolve()) for s in sources], policy.to_dict()], sort_keys=True)
    stem = f"{name}-{size}px-{policy.mode}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
    path = directory / f"{stem}-{cache_key(sources, size, policy)}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.dtype == np.uint8 and cached.shape[1:] == (3, size, size):
            return torch.from_numpy(cached)
    except (OSError, ValueError, EOFError):  # missing, truncated or foreign: convert again
        pass
    images = convert()
    with contextlib.suppress(OSError):  # a read-only or full disk costs the speed-up, not the run
        _store(images, directory, stem, path)
    return images


def _store(images: torch.Tensor, directory: Path, stem: str, path: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{stem}-", suffix=".npy")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, images.numpy(), allow_pickle=False)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)  # only left when the write failed
    for stale in directory.glob(f"{stem}-*.npy"):
        if stale != path:
            stale.unlink(missing_ok=True)
