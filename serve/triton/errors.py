"""The launcher's errors (one base class, so callers can catch every Triton start/connect failure)."""

from __future__ import annotations


class TritonError(RuntimeError):
    """Base class of the launcher's errors."""


class RepositoryNotFoundError(TritonError, FileNotFoundError):
    pass


class PortInUseError(TritonError):
    """A port is taken; ``service`` is "http", "grpc" or "metrics" when known."""

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class ModelLoadError(TritonError):
    """One or more models failed to load; ``reasons`` maps model name to Triton's message."""

    def __init__(self, reasons: dict[str, str], log_tail: str = "") -> None:
        self.reasons = reasons
        self.log_tail = log_tail
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
        super().__init__(f"Triton failed to load model(s): {listed}")


class ServerStartError(TritonError):
    """The server exited or did not become ready in time; the message carries the end of its log."""
