"""Name -> implementation registries filled by a decorator where each implementation is defined (as in timm).

    DATASETS = Registry("data set")

    @DATASETS.register("cifar10", aliases=("cifar-10",))
    def _cifar10(...): ...

    DATASETS.get("CIFAR_10")  # -> _cifar10; unknown names raise ValueError with the choices

A registry replaces the hand-kept dict (which needed an assert to stay in sync with its functions) and the
if/elif chain: adding an implementation is one decorated definition. Torch-free, so CLIs can list choices
without importing the implementations' heavy dependencies.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def normalise(name: str) -> str:
    """Registry keys are case-insensitive and treat ``-`` and ``_`` alike."""
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """An ordered name -> object mapping; registering a name twice is an error, not an override."""

    def __init__(self, kind: str, allowed: tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self._allowed = None if allowed is None else {normalise(n) for n in allowed}
        self._items: dict[str, T] = {}
        self._names: dict[str, str] = {}  # normalised name or alias -> canonical name

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (and ``aliases``), return it unchanged."""
        if self._allowed is not None and normalise(name) not in self._allowed:
            raise ValueError(f"{name!r} is not a {self.kind} of the contract (dyntta.contract)")

        def decorate(obj: T) -> T:
            for key in (name, *aliases):
                if normalise(key) in self._names:
                    raise ValueError(f"{self.kind} {key!r} is registered twice")
                self._names[normalise(key)] = name
            self._items[name] = obj
            return obj

        return decorate

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or an alias; ``ValueError`` naming the choices otherwise."""
        try:
            return self._names[normalise(name)]
        except KeyError:
            close = difflib.get_close_matches(normalise(name), list(self._names), n=1)
            hint = f" (did you mean {self._names[close[0]]!r}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; expected one of {', '.join(self)}") from None

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise(name) in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
