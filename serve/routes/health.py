"""Health, readiness, Prometheus metrics and model descriptions."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.deps import BackendDep, MetricsDep, SettingsDep
from serve.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelDescription,
    ModelsResponse,
    ReadyResponse,
    TrainingDescription,
)

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The gateway process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="Triton is live and every served model is ready",
)
async def readyz(backend: BackendDep, settings: SettingsDep) -> JSONResponse:
    names = [settings.ensemble_model, settings.recognizer_model, settings.enhancer_model]
    live = await backend.is_live()
    models = await backend.models_ready(names) if live else dict.fromkeys(names, False)
    ready = live and all(models.values())
    message = None
    if not live:
        message = f"Triton at {backend.url} is not reachable"
    elif not ready:
        message = "models not ready: " + ", ".join(n for n, ok in models.items() if not ok)
    body = ReadyResponse(ready=ready, triton_url=backend.url, triton_live=live, models=models, message=message)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the gateway",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/models",
    response_model=ModelsResponse,
    tags=["inference"],
    responses={503: {"model": ErrorResponse}},
    summary="The served models: input size, labels, versions, how each was trained",
)
async def models(backend: BackendDep, settings: SettingsDep) -> ModelsResponse:
    described = []
    for name in (settings.ensemble_model, settings.recognizer_model, settings.enhancer_model):
        info = await backend.model_info(name)
        described.append(
            ModelDescription(
                name=info.name,
                version=info.version,
                input_size=info.input_size,
                max_batch_size=info.max_batch_size,
                labels=list(info.labels) if info.labels else None,
                training=TrainingDescription(**dataclasses.asdict(info.training)) if info.training else None,
            )
        )
    return ModelsResponse(triton_url=backend.url, models=described)
