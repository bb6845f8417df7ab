"""Dependencies: the per-app resources created in ``lifespan``, and the API-key guard.

All are ``async def``: FastAPI runs sync dependencies in the thread pool, one thread hop each per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serve.admission import Admission
from serve.config import Settings
from serve.decode_pool import DecodePool
from serve.errors import Unauthorized
from serve.inference import TritonBackend
from serve.jobs import JobManager
from serve.middleware import Metrics

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="required on every /v1 route when the gateway has an API key set"
)


T = TypeVar("T")


def app_resource(request: Request, name: str, kind: type[T]) -> T:
    """``request.app.state.<name>``, set by ``serve.app``, checked to be a ``kind``."""
    value = getattr(request.app.state, name)
    if not isinstance(value, kind):
        raise TypeError(f"app.state.{name} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _resource(name: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """The dependency that returns ``app.state.<name>``."""

    async def get(request: Request) -> T:
        return app_resource(request, name, kind)

    return get


def request_fingerprint(request: Request) -> str | None:
    """Fingerprint of the API key this request authenticated with (``serve.security.key_fingerprint``);
    "" when the gateway has no key, None when none matched. Set by :class:`serve.security.ApiKeyGuard`
    before the body is read."""
    fingerprint = getattr(request.state, "api_key_fingerprint", None)
    return None if fingerprint is None else str(fingerprint)


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    """Documents the key in the OpenAPI schema. The check itself is :class:`serve.security.ApiKeyGuard`,
    which runs before the body is read; this only refuses if that guard was somehow not installed."""
    if app_resource(request, "settings", Settings).api_keys and not request_fingerprint(request):
        raise Unauthorized("missing or wrong API key")


SettingsDep = Annotated[Settings, Depends(_resource("settings", Settings))]
BackendDep = Annotated[TritonBackend, Depends(_resource("backend", TritonBackend))]
JobsDep = Annotated[JobManager, Depends(_resource("jobs", JobManager))]
MetricsDep = Annotated[Metrics, Depends(_resource("metrics", Metrics))]
AdmissionDep = Annotated[Admission, Depends(_resource("admission", Admission))]
DecoderDep = Annotated[DecodePool, Depends(_resource("decoder", DecodePool))]


@dataclass(frozen=True)
class Resources:
    """The per-app resources every upload route works with, as one dependency."""

    backend: TritonBackend
    settings: Settings
    metrics: Metrics
    admission: Admission
    decoder: DecodePool


async def _resources(
    backend: BackendDep, settings: SettingsDep, metrics: MetricsDep, admission: AdmissionDep, decoder: DecoderDep
) -> Resources:
    return Resources(backend, settings, metrics, admission, decoder)


ResourcesDep = Annotated[Resources, Depends(_resources)]
