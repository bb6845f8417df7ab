"""The plain recognizer a strategy exports: what is left of its trained model once the modules the strategy
added for training (Learn2Perturb's noise, AdvBN's second BatchNorm branch) are taken out."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dyntta.models import Recognizer, RecognizerConfig


def recognizer_config(model: nn.Module) -> RecognizerConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, RecognizerConfig):
        raise TypeError(f"{type(model).__name__} is not a dyntta recognizer (no RecognizerConfig in .config)")
    return config


def plain_recognizer(model: nn.Module, source_key: Callable[[str], str] = str) -> Recognizer:
    """A fresh :class:`Recognizer` with ``model``'s config, on its device, whose every state entry is
    ``model``'s entry ``source_key(key)`` (no hooks or extra modules carried over)."""
    state = model.state_dict()
    plain = Recognizer(recognizer_config(model)).to(next(model.parameters()).device)
    plain.load_state_dict({key: state[source_key(key)] for key in plain.state_dict()})
    return plain
