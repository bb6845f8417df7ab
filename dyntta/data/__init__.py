"""Data sets and the preprocessing contract."""

from dyntta.contract import DatasetNotFoundError
from dyntta.data.datasets import (
    DATASETS,
    LabelledImages,
    load_dataset,
    split_validation,
)
from dyntta.data.transforms import arrays_to_model_input, to_float, to_model_input

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "LabelledImages",
    "load_dataset",
    "split_validation",
    "arrays_to_model_input",
    "to_float",
    "to_model_input",
]
