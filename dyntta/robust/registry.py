"""The training-method registry: each :class:`~dyntta.robust.strategy.TrainingStrategy` registers itself
where it is defined, with ``@register_strategy("name")``; ``dyntta.robust.STRATEGIES`` is this registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dyntta.registry import Registry

if TYPE_CHECKING:
    from dyntta.robust.strategy import TrainingStrategy

STRATEGIES: Registry[type[TrainingStrategy]] = Registry("training method")
register_strategy = STRATEGIES.register
