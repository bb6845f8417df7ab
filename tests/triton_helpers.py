"""Shared by the test packages that serve a freshly exported repository through the bundled Triton."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from serve.triton import TritonServer


def running_triton(repository: Path, startup_timeout: float) -> Iterator[TritonServer]:
    """For a fixture to ``yield from``: a started server on ``repository``, stopped at teardown."""
    server = TritonServer(repository, startup_timeout=startup_timeout)
    with server:
        yield server
