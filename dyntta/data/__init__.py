"""Data sets and the preprocessing contract.

The contract itself (:func:`to_model_input`, :class:`Preprocess`) is torch-free and imported eagerly; the
data sets and tensor helpers need torch and are imported on first use, so that the gateway can decode
uploads through ``dyntta.data`` without loading the ML stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dyntta.contract import DatasetNotFoundError
from dyntta.data.preprocess import CENTER_CROP, RESIZE, Preprocess, to_model_input

if TYPE_CHECKING:
    from dyntta.data.datasets import DATASETS, LabelledImages, load_dataset, split_validation
    from dyntta.data.transforms import arrays_to_model_input, to_float

_LAZY = {
    "DATASETS": "dyntta.data.datasets",
    "LabelledImages": "dyntta.data.datasets",
    "load_dataset": "dyntta.data.datasets",
    "split_validation": "dyntta.data.datasets",
    "arrays_to_model_input": "dyntta.data.transforms",
    "to_float": "dyntta.data.transforms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dyntta.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CENTER_CROP",
    "DATASETS",
    "DatasetNotFoundError",
    "LabelledImages",
    "Preprocess",
    "RESIZE",
    "arrays_to_model_input",
    "load_dataset",
    "split_validation",
    "to_float",
    "to_model_input",
]
