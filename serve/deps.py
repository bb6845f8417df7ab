"""Dependencies: the per-app resources created in ``lifespan``, and the API-key guard.

All are ``async def``: FastAPI runs sync dependencies in the thread pool, one thread hop each per request.
"""

from __future__ import annotations

from typing import Annotated

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


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_backend(request: Request) -> TritonBackend:
    return request.app.state.backend


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_admission(request: Request) -> Admission:
    return request.app.state.admission


async def get_decoder(request: Request) -> DecodePool:
    return request.app.state.decoder


async def key_fingerprint(request: Request) -> str | None:
    """Fingerprint of the API key this request authenticated with (``serve.security.key_fingerprint``);
    "" when the gateway has no key. Set by :class:`serve.security.ApiKeyGuard` before the body is read."""
    return getattr(request.state, "api_key_fingerprint", None)


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    """Documents the key in the OpenAPI schema. The check itself is :class:`serve.security.ApiKeyGuard`,
    which runs before the body is read; this only refuses if that guard was somehow not installed."""
    if request.app.state.settings.api_keys and not getattr(request.state, "api_key_fingerprint", None):
        raise Unauthorized("missing or wrong API key")


SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendDep = Annotated[TritonBackend, Depends(get_backend)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
DecoderDep = Annotated[DecodePool, Depends(get_decoder)]
#: for the job routes: jobs are stored with this and listed/read only by the same fingerprint
KeyFingerprintDep = Annotated[str | None, Depends(key_fingerprint)]
