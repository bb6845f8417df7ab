"""Enhancer checkpoints: ``config.json`` (architecture, the recognizer it was trained for, recipe,
metrics) + ``model.safetensors``, the same layout as recognizer checkpoints."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dyntta.enhancer.model import DynTTAEnhancer, EnhancerConfig, blend_names
from dyntta.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_meta
from dyntta.version import __version__

ENHANCER_FORMAT = "dyntta.enhancer/1"


def save_enhancer(model: DynTTAEnhancer, directory: str | os.PathLike, *, recipe: dict[str, Any] | None = None,
                  metrics: dict[str, Any] | None = None, weights_dtype: str = "float32") -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, weights_dtype)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": ENHANCER_FORMAT})
    meta = {
        "format": ENHANCER_FORMAT,
        "dyntta_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_parameters": model.num_parameters(),
        "weights_dtype": weights_dtype,
        "model": model.config.to_dict(),
        "blend": blend_names(),
        "recipe": recipe or {},
        "metrics": metrics or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_enhancer(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> DynTTAEnhancer:
    meta = read_checkpoint_meta(directory)
    if meta.get("format") != ENHANCER_FORMAT:
        raise ValueError(f"{directory} holds {meta.get('format')!r}, not an enhancer ({ENHANCER_FORMAT})")
    model = DynTTAEnhancer(EnhancerConfig.from_dict(meta["model"]))
    state = load_file(str(Path(directory) / WEIGHTS_FILE), device=str(map_location))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()
