"""Robust training methods, each a :class:`TrainingStrategy` for the one training loop.

``create_strategy(method, **kwargs)`` builds one; string values (from ``--method-args KEY=VALUE``) are
converted to the type of the constructor argument's default.
"""

from __future__ import annotations

import inspect
from typing import Any

from dyntta.robust.advbn import AdvBN
from dyntta.robust.damp import DAMP
from dyntta.robust.dpl import DPL
from dyntta.robust.l2p import Learn2Perturb
from dyntta.robust.registry import STRATEGIES  # filled by @register_strategy where each method is defined
from dyntta.robust.sam import ASAM, SAM
from dyntta.robust.strategy import TrainingStrategy

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def method_parameters(method: str) -> dict[str, Any]:
    """The hyper-parameters a method accepts, with their defaults."""
    if method not in STRATEGIES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(STRATEGIES)}")
    signature = inspect.signature(STRATEGIES[method].__init__)
    return {name: p.default for name, p in signature.parameters.items() if name != "self"}


def _convert(method: str, key: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in _TRUE | _FALSE:
                raise ValueError(value)
            return value.lower() in _TRUE
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            if "/" in value:  # e.g. eps=8/255
                num, den = value.split("/", 1)
                return float(num) / float(den)
            return float(value)
    except ValueError:
        raise ValueError(f"{method}: {key}={value!r} is not a valid {type(default).__name__}") from None
    return value


def create_strategy(method: str, **kwargs: Any) -> TrainingStrategy:
    accepted = method_parameters(method)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {method!r} has no parameter(s) {unknown}; it accepts "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        )
    values = {k: _convert(method, k, v, accepted[k]) for k, v in kwargs.items()}
    return STRATEGIES[method](**values)


def parse_method_args(items: list[str] | None) -> dict[str, str]:
    """``["sigma=0.1", "micro_batches=8"]`` -> ``{"sigma": "0.1", "micro_batches": "8"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--method-args expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


__all__ = [
    "ASAM",
    "SAM",
    "STRATEGIES",
    "AdvBN",
    "DAMP",
    "DPL",
    "Learn2Perturb",
    "TrainingStrategy",
    "create_strategy",
    "method_parameters",
    "parse_method_args",
]
