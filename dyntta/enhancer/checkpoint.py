"""Enhancer checkpoints: ``config.json`` (architecture, the recognizer it was trained for, recipe,
metrics) + ``model.safetensors``, the same layout as recognizer checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dyntta.enhancer.model import DynTTAEnhancer, EnhancerConfig, blend_names
from dyntta.models.checkpoint import read_checkpoint_meta, read_weights, write_checkpoint

ENHANCER_FORMAT = "dyntta.enhancer/1"


def save_enhancer(
    model: DynTTAEnhancer,
    directory: str | os.PathLike,
    *,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    weights_dtype: str = "float32",
) -> Path:
    return write_checkpoint(
        model,
        directory,
        ENHANCER_FORMAT,
        {"model": model.config.to_dict(), "blend": blend_names()},
        recipe=recipe,
        metrics=metrics,
        weights_dtype=weights_dtype,
    )


def load_enhancer(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> DynTTAEnhancer:
    meta = read_checkpoint_meta(directory)
    if meta.get("format") != ENHANCER_FORMAT:
        raise ValueError(f"{directory} holds {meta.get('format')!r}, not an enhancer ({ENHANCER_FORMAT})")
    model = DynTTAEnhancer(EnhancerConfig.from_dict(meta["model"]))
    model.load_state_dict(read_weights(directory, map_location))
    return model.eval()
