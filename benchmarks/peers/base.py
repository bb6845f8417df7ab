"""The interface every peer implements: logits for a float batch in [0, 1], and a way back to the source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Adapter(Protocol):
    """A test-time method. ``online`` methods carry state from one call to the next until :meth:`reset`;
    the others (episodic) start from the source model on every call."""

    online: bool

    def reset(self) -> None: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class Stateless:
    """A fixed prediction function (no adaptation): the recognizer, flip TTA, enhancer + recognizer."""

    online = False

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.predict = predict

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)
