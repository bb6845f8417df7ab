"""What every layer agrees on, in one module that imports nothing but the standard library.

Training (``dyntta``), export (``export``), the model repository and the gateway (``serve``) all speak
in these names; a change here is a change of the served contract and every layer follows it. The module
must stay cheap to import (no torch, no numpy at import: ``tests/test_contract_module.py`` checks), so
that the gateway and the command-line tools can use it without loading the ML stack.

- Tensors and models: :data:`IMAGE` (uint8 ``[N, S, S, 3]``, the input of every served model),
  :data:`LOGITS`, :data:`ENHANCED_IMAGE`; the models :data:`ENHANCER`, :data:`RECOGNIZER` and the
  ensemble :data:`ENSEMBLE` (enhancer -> recognizer); the config parameters clients read, among them
  :class:`Training` (how a served model was trained).
- The corruption taxonomy of the robustness benchmark (Hendrycks & Dietterich, ICLR 2019): the 15
  benchmark corruptions in their four groups and the standard order, the 4 validation extras, the
  severities, and :func:`resolve_conditions` to parse user choices.
- Data-set files: :func:`fashion_mnist_files` finds the default data set's IDX files.
- Image files: :data:`IMAGE_SUFFIXES` (the formats the gateway decodes) and :func:`is_image_path` /
  :func:`find_images`, the one rule for which files of a folder or an archive are images.
- Triton's classification extension: :func:`parse_classification` reads the labels it returns.
- Small numeric helpers every layer formats or hashes with: :func:`softmax`, :func:`sha256_file`,
  :func:`percent`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported lazily: importing this module must stay free of it
    import numpy as np

# --- Tensors and models ---------------------------------------------------------------------------------

IMAGE = "IMAGE"
"""Input of every served model: uint8 ``[N, S, S, 3]`` RGB (NHWC), batch dimension dynamic."""
LOGITS = "LOGITS"
"""Output of the recognizer and the ensemble: float32 ``[N, num_classes]`` raw logits."""
ENHANCED_IMAGE = "ENHANCED_IMAGE"
"""Output of the enhancer: uint8 ``[N, S, S, 3]``, the same layout as :data:`IMAGE`."""
IMAGE_DATATYPE = "UINT8"
"""Triton datatype of :data:`IMAGE` and :data:`ENHANCED_IMAGE`."""
LOGITS_DATATYPE = "FP32"
"""Triton datatype of :data:`LOGITS`."""
OP_WEIGHTS = "OP_WEIGHTS"
"""Second output of the enhancer: float32 ``[N, K]``, the predictor's blend weight of each of its K
operations for each image (the op names, in order, are the enhancer config's ``op_names`` parameter).
The ensemble ignores it; the web page shows which operations the enhancer relied on."""
OP_NAMES_PARAMETER = "op_names"
"""Triton config parameter of the enhancer: its operation names, comma-separated, in :data:`OP_WEIGHTS` order."""
PREPROCESS_PARAMETER = "preprocess"
"""Triton config parameter of the recognizer: the JSON of its preprocessing policy (resize / crop /
letterbox), the same the recognizer was trained and evaluated with (``dyntta.data`` reads it)."""

TRAINING_PARAMETER = "training"
"""Triton config parameter of the recognizer and the enhancer: the JSON of :class:`Training`, how the served
model was trained (from its checkpoint's recipe). Absent for a model without a recipe (a user's ONNX file)."""


@dataclasses.dataclass(frozen=True)
class Training:
    """How a served model was trained, as its checkpoint recorded it: the method (``erm``, ``dpl``, ...; none
    for the enhancer, whose objective is its ``loss``), the loss, and the command that trained it."""

    method: str | None = None
    loss: str | None = None
    command: str | None = None

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any] | None) -> Training | None:
        """From a checkpoint's ``recipe`` (``config.json``); ``None`` when there is none."""
        if not recipe:
            return None
        text = {key: recipe.get(key) for key in ("method", "loss", "command")}
        return cls(**{key: value if isinstance(value, str) else None for key, value in text.items()})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Training | None:
        """The parameter's value back; ``None`` for an absent parameter. Raises ValueError if malformed."""
        if not text:
            return None
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or not set(fields) <= known:
            raise ValueError(f"expected an object with keys among {sorted(known)}, got {text[:200]!r}")
        if any(value is not None and not isinstance(value, str) for value in fields.values()):
            raise ValueError(f"every value must be a string or null, got {text[:200]!r}")
        return cls(**fields)


ENHANCER = "enhancer"
RECOGNIZER = "recognizer"
ENSEMBLE = "dyntta"
"""The served pipeline: :data:`ENHANCER` then :data:`RECOGNIZER`, one Triton ensemble."""
MODEL_NAMES: tuple[str, ...] = (ENSEMBLE, RECOGNIZER, ENHANCER)

# --- Corruption taxonomy ---------------------------------------------------------------------------------

BENCHMARK_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
"""The 15 ImageNet-C corruptions in their groups, in the benchmark's order. mCE and every "overall" mean
are over these only."""
BENCHMARK_CORRUPTIONS: tuple[str, ...] = tuple(name for names in BENCHMARK_GROUPS.values() for name in names)
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 validation corruptions: reported apart, never part of mCE or the overall mean."""
CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
"""All 19, benchmark ones first. The position of a name here keys its random numbers: do not reorder."""
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {**BENCHMARK_GROUPS, "extra": EXTRA_CORRUPTIONS}
GROUP_OF: dict[str, str] = {name: group for group, names in CORRUPTION_GROUPS.items() for name in names}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CLEAN = "clean"
"""The condition name of the uncorrupted images (severity 0)."""
SELECTION_GROUPS: tuple[str, ...] = (*BENCHMARK_GROUPS, "extra", "core", "all")
"""Group names :func:`resolve_conditions` accepts besides single corruptions."""


def _expand(raw: str) -> tuple[str, ...]:
    key = raw.strip().lower().replace("-", "_")
    if key in CORRUPTIONS:
        return (key,)
    if key in BENCHMARK_GROUPS:
        return BENCHMARK_GROUPS[key]
    if key in ("extra", "extras"):
        return EXTRA_CORRUPTIONS
    if key in ("core", "imagenet_c"):
        return BENCHMARK_CORRUPTIONS
    if key == "all":
        return CORRUPTIONS
    import difflib  # only on this error path: importing it costs as much as the rest of the module

    close = difflib.get_close_matches(key, [*CORRUPTIONS, *BENCHMARK_GROUPS], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown corruption {raw!r}{hint}; expected one of {', '.join(CORRUPTIONS)} "
        f"or a group ({', '.join(SELECTION_GROUPS)})"
    )


def _severity(raw: object) -> int:
    try:
        level = int(raw)  # type: ignore[call-overload]
        exact = float(raw) == level  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact or isinstance(raw, bool) or level not in SEVERITIES:
        raise ValueError(f"invalid severity {raw!r}; severities are integers 1 to 5")
    return int(level)


def resolve_conditions(
    corruptions: Iterable[str] | None = None, severities: Iterable[int | str] | None = None
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validate and order corruption names and severities; group names ("noise", "extra", "core", "all")
    expand to their members. ``None`` means all 19 corruptions / all 5 severities.

    Raises ``ValueError`` naming the valid choices (and the closest name) for anything unknown.
    """
    if corruptions is None:
        names = set(CORRUPTIONS)
    else:
        requested = list(corruptions)
        if not requested:
            raise ValueError("no corruptions requested")
        names = {name for raw in requested for name in _expand(raw)}
    if severities is None:
        levels = set(SEVERITIES)
    else:
        requested_levels = list(severities)
        if not requested_levels:
            raise ValueError("no severities requested")
        levels = {_severity(raw) for raw in requested_levels}
    return tuple(n for n in CORRUPTIONS if n in names), tuple(sorted(levels))


# --- Image files ----------------------------------------------------------------------------------------

IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")
"""Pillow format names the gateway decodes; training folders, evaluation zips and the batch client read
the same formats, so a data set that trains also serves."""
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
"""File suffixes (lower case) of :data:`IMAGE_FORMATS`."""


def is_image_path(path: PurePath) -> bool:
    """An image by its suffix, not inside a hidden folder and not a hidden file (``.DS_Store``, macOS's
    ``._name`` resource forks, ``__MACOSX/``): the rule for folders and archives alike. ``path`` should be
    relative to the folder or archive root."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; ``[root]`` if ``root`` is a file."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p.relative_to(root)))


def find_class_images(directory: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """An ImageFolder: ``(classes, [(image path, class index)])``. Classes are the sorted non-hidden
    sub-folders of ``directory``; a class's images are found recursively with :func:`find_images`."""
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, label) for label, name in enumerate(classes) for f in find_images(directory / name)]
    return classes, files


# --- Data-set files --------------------------------------------------------------------------------------


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message says what to install or where files are expected."""


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""
FASHION_MNIST_ENV = "DYNTTA_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def fashion_mnist_files(split: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The (images, labels) IDX files of a Fashion-MNIST split, gzipped or not: under ``root``, else
    ``$DYNTTA_FASHION_MNIST_DIR``, else :data:`FASHION_MNIST_DIR`. Training, the gateway's built-in
    evaluation set and the tests find the files the same way."""
    directory = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = next((c for c in (directory / f"{stem}.gz", directory / stem) if c.is_file()), None)
        if path is None:
            raise DatasetNotFoundError(
                f"Fashion-MNIST file {stem}[.gz] not found in {directory}: install it with "
                f"'apt-get install dataset-fashion-mnist' or point --data-dir / {FASHION_MNIST_ENV} at the IDX files"
            )
        found.append(path)
    return found[0], found[1]


# --- Triton's classification extension ------------------------------------------------------------------


def parse_classification(entries: Iterable[bytes | str], num_classes: int) -> tuple[str, ...]:
    """Labels from a classification-extension reply (``"score:index:label"`` per class, any order).

    Classes the reply does not name keep their index as label, so a model without a labels file still
    gets ``("0", "1", ...)``.
    """
    labels = [str(i) for i in range(num_classes)]
    for entry in entries:
        text = entry.decode() if isinstance(entry, bytes) else str(entry)
        parts = text.split(":", 2)
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < num_classes:
            labels[int(parts[1])] = parts[2]
    return tuple(labels)


# --- Numbers --------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Row-wise softmax of ``[N, C]`` logits in float64 (stable: the row maximum is subtracted first)."""
    import numpy as np

    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray[Any, Any] = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def percent(value: float | None, digits: int = 1, *, signed: bool = False) -> str:
    """A fraction as percent without the sign (0.9134 -> "91.3"); "–" for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):{'+' if signed else ''}.{digits}f}"


__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "BENCHMARK_GROUPS",
    "CLEAN",
    "CORRUPTIONS",
    "CORRUPTION_GROUPS",
    "DatasetNotFoundError",
    "ENHANCED_IMAGE",
    "ENHANCER",
    "ENSEMBLE",
    "EXTRA_CORRUPTIONS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "GROUP_OF",
    "IMAGE",
    "IMAGE_DATATYPE",
    "IMAGE_FORMATS",
    "IMAGE_SUFFIXES",
    "LOGITS",
    "LOGITS_DATATYPE",
    "MODEL_NAMES",
    "RECOGNIZER",
    "SELECTION_GROUPS",
    "SEVERITIES",
    "fashion_mnist_files",
    "find_class_images",
    "find_images",
    "is_image_path",
    "parse_classification",
    "percent",
    "resolve_conditions",
    "sha256_file",
    "softmax",
]
