"""Recognizers (timm factory) and their checkpoint format."""

from dyntta.models.checkpoint import load_recognizer, read_checkpoint_meta, read_preprocess, save_recognizer
from dyntta.models.recognizers import (
    Recognizer,
    RecognizerConfig,
    adapt_stem_for_small_inputs,
    create_recognizer,
)

__all__ = [
    "Recognizer",
    "RecognizerConfig",
    "adapt_stem_for_small_inputs",
    "create_recognizer",
    "load_recognizer",
    "read_checkpoint_meta",
    "read_preprocess",
    "save_recognizer",
]
