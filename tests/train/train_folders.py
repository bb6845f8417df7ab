"""Tiny generated ImageFolders for training tests: learnable classes (each a colour and stripe direction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def make_image_folder(
    root: Path, per_class: int = 60, classes: int = 3, size: int = 16, splits: tuple[str, ...] = ("train", "test")
) -> Path:
    """``root/{train,test}/class_k/*.png``: class k is colour k with noise, so a tiny model learns it fast."""
    rng = np.random.default_rng(0)
    for split in splits:
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            n = per_class if split == "train" else max(4, per_class // 4)
            for i in range(n):
                pixels = np.array(COLOURS[k % len(COLOURS)], dtype=np.float32) * rng.uniform(0.6, 1.0)
                image = pixels + rng.normal(0, 25, (size, size, 3))
                if k % 2:
                    image[::4] *= 0.5  # horizontal stripes for odd classes
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root
