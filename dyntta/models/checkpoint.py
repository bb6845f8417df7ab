"""Checkpoint format: a directory with ``config.json`` (what the model is and how it was made) and
``model.safetensors`` (weights).

``config.json`` records the architecture, classes, input size, normalisation, the training recipe and the
measured metrics, so a checkpoint can be rebuilt and judged without the code that trained it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dyntta.data.preprocess import Preprocess
from dyntta.models.recognizers import Recognizer, RecognizerConfig
from dyntta.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RECOGNIZER_FORMAT = "dyntta.recognizer/1"


def save_recognizer(
    model: Recognizer,
    directory: str | os.PathLike,
    *,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    weights_dtype: str = "float32",
) -> Path:
    """Save ``model`` to ``directory``. ``weights_dtype="float16"`` halves the file (for committed models);
    floating tensors are rounded on save and loaded back as float32."""
    return write_checkpoint(
        model,
        directory,
        RECOGNIZER_FORMAT,
        {"model": model.config.to_dict()},
        recipe=recipe,
        metrics=metrics,
        weights_dtype=weights_dtype,
    )


def write_checkpoint(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    fmt: str,
    description: dict[str, Any],
    *,
    recipe: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    weights_dtype: str,
) -> Path:
    """Write ``model.safetensors`` (floating tensors in ``weights_dtype``) and ``config.json`` for any model
    kind; ``description`` holds what rebuilds the model.

    Each file is written under a temporary name and renamed into place, weights first: a reader (or a
    crash) never sees a half-written file, and a ``config.json`` is never newer than its weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, weights_dtype)
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    _write_atomically(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": fmt}))
    meta = {
        "format": fmt,
        "dyntta_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "weights_dtype": weights_dtype,
        **description,
        "recipe": recipe or {},
        "metrics": metrics or {},
    }
    text = json.dumps(meta, indent=2) + "\n"
    _write_atomically(directory / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return directory


def _file_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the umask (0644 with the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX).

    safetensors (and ``tempfile``) create files 0600; the checkpoint gets the permissions of any file the
    user writes, so that a served or shared checkpoint is readable."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_weights(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, floating ones as float32 whatever dtype they were stored in."""
    state = load_file(str(Path(directory) / WEIGHTS_FILE), device=str(map_location))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"not a dyntta checkpoint: {path} is missing")
    return json.loads(path.read_text())


def read_preprocess(directory: str | os.PathLike) -> Preprocess:
    """The preprocessing policy a recognizer checkpoint records (plain resize if it records none)."""
    meta = read_checkpoint_meta(directory)
    return Preprocess.from_dict((meta.get("model") or {}).get("preprocess"))


def load_recognizer(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Recognizer:
    meta = read_checkpoint_meta(directory)
    if meta.get("format") != RECOGNIZER_FORMAT:
        raise ValueError(f"{directory} holds {meta.get('format')!r}, not a recognizer ({RECOGNIZER_FORMAT})")
    model = Recognizer(RecognizerConfig.from_dict(meta["model"]))
    model.load_state_dict(read_weights(directory, map_location))
    return model.eval()
