"""``with`` support shared by the server and its supervisor: enter starts, exit stops."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

from serve.triton.urls import TritonURLs


class Startable(ABC):
    """``with x as urls:`` starts ``x`` (returning its URLs) and stops it on the way out, even on error."""

    @abstractmethod
    def start(self) -> TritonURLs: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> TritonURLs:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
