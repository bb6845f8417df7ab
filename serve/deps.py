"""Dependencies: the per-app resources created in ``lifespan``, and the API-key guard.

All are ``async def``: FastAPI runs sync dependencies in the thread pool, one thread hop each per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serve.config import Settings
from serve.errors import Unauthorized
from serve.inference import TritonBackend
from serve.jobs import JobManager
from serve.middleware import Metrics

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="required on POST endpoints when the gateway has an API key set"
)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_backend(request: Request) -> TritonBackend:
    return request.app.state.backend


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def require_api_key(request: Request, key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    expected = request.app.state.settings.api_key
    if expected and not (key and secrets.compare_digest(key.encode(), expected.encode())):
        raise Unauthorized("missing or wrong X-API-Key header")


SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendDep = Annotated[TritonBackend, Depends(get_backend)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
