"""Helpers shared by the gateway tests: real Fashion-MNIST images, image encoding, ``python -m serve``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dyntta.contract import DatasetNotFoundError, fashion_mnist_files
from dyntta.data.datasets import read_idx


def fmnist_raw(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` raw 28x28 grayscale images and labels of a Fashion-MNIST split (IDX files)."""
    try:
        images_path, labels_path = fashion_mnist_files(split)
    except DatasetNotFoundError as missing:
        pytest.skip(str(missing))
    return read_idx(images_path)[:count], read_idx(labels_path)[:count].astype(np.int64)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def header_bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height``: what a decompression bomb looks like to a
    decoder that trusts the header (checked before any pixel is decoded)."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = crc.to_bytes(4, "big")
    return bytes(data)


REPO_ROOT = Path(__file__).resolve().parents[2]


def start_serve(repository: Path, state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """``python -m serve`` (bundled Triton + gateway) on ``repository``, gateway on ``port``; the caller waits
    for readiness (:func:`wait_ready`) and stops it."""
    env = {**os.environ, "DYNTTA_PORT": str(port), "DYNTTA_STATE_DIR": str(state_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "serve", "--model-repository", str(repository), "--log-level", "warning"],
        cwd=REPO_ROOT,
        env=env,
    )


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout_s: float = 240) -> str:
    """Poll the gateway's /readyz until it reports ready; fails if ``process`` exits first or time runs out.
    Returns the gateway's base URL."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "python -m serve exited early"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if json.loads(response.read())["ready"]:
                    return url
        except OSError:
            pass
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.3)
