"""Command lines shared by the training tests."""

from __future__ import annotations

from pathlib import Path


def recognizer_argv(data: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    """``python -m dyntta.train`` arguments: the tiny test recognizer on the image folder ``data``, 16 px,
    on CPU, into ``out``; ``extra`` flags last (a repeated flag overrides the one here)."""
    return [
        "recognizer",
        "--arch",
        "test_resnet",
        "--data",
        "imagefolder",
        "--data-dir",
        str(data),
        "--image-size",
        "16",
        "--epochs",
        str(epochs),
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]
