"""Robust training methods, each a :class:`TrainingStrategy` for the one training loop."""

from dyntta.robust.strategy import TrainingStrategy

STRATEGIES: dict[str, type[TrainingStrategy]] = {"erm": TrainingStrategy}


def create_strategy(method: str, **kwargs) -> TrainingStrategy:
    if method not in STRATEGIES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[method](**kwargs)


__all__ = ["STRATEGIES", "TrainingStrategy", "create_strategy"]
