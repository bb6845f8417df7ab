"""The gateway application factory.

``create_app(settings, triton_grpc)`` wires routers, error handlers and middleware; ``lifespan`` creates the
per-app resources (the one async Triton client, the job manager) on the serving event loop and closes them
on shutdown. Nothing here starts Triton: see ``serve/__main__.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image

from dyntta.version import __version__
from serve.admission import Admission, AdmissionGate
from serve.config import Settings
from serve.decode_pool import DecodePool
from serve.errors import install_error_handlers
from serve.inference import TritonBackend
from serve.jobs import JobManager, JobStateCollector
from serve.middleware import BodySizeLimit, Metrics, MetricsMiddleware
from serve.observability import RequestIdMiddleware
from serve.routes import health, inference, playground, robustness, web
from serve.security import ApiKeyGuard, BrowserGuard, SecurityHeaders, default_allowed_hosts

log = logging.getLogger("serve")
WEB_DIR = Path(__file__).parent / "web"


def create_app(settings: Settings | None = None, triton_grpc: str | Sequence[str] | None = None) -> FastAPI:
    """Build the gateway. ``triton_grpc`` (one or more Triton URLs, see ``serve.triton.urls``; host:port is
    gRPC) overrides ``settings.triton_url``."""
    settings = settings or Settings.from_env()
    url = triton_grpc or settings.triton_url
    if not url:
        raise ValueError("no Triton gRPC address: pass triton_grpc or set settings.triton_url")
    metrics = Metrics(triton_deadline_s=settings.triton_timeout_s)
    admission = Admission(settings.max_inflight, settings.max_waiting, settings.queue_wait_s)
    decoder = DecodePool(settings.decode_workers, settings.decode_cpu_s, on_task=metrics.decode_cpu.observe)
    metrics.inference_waiting.set_function(lambda: admission.waiting)
    metrics.inference_in_flight.set_function(lambda: admission.in_flight)
    metrics.decode_waiting.set_function(lambda: decoder.waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Pillow's own bomb guard (it raises at twice this); decode_to_model_input refuses at 1x itself.
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        backend = TritonBackend(
            url,
            models=[settings.ensemble_model, settings.recognizer_model, settings.enhancer_model],
            timeout_s=settings.triton_timeout_s,
            max_inflight=settings.max_inflight,
            registry=metrics.registry,  # per-replica request counts, errors, state
        )
        await backend.start()
        await decoder.open()

        # the store, the state-directory lock and the embedded worker process(es) (jobs never run here)
        jobs = await asyncio.to_thread(JobManager, settings, url)
        app.state.backend, app.state.jobs = backend, jobs
        metrics.registry.register(JobStateCollector(jobs.store))  # jobs by state, from the store at scrape
        log.info("gateway ready: Triton gRPC at %s, state in %s", backend.url, settings.state_dir)
        try:
            yield
        finally:
            admission.draining = True  # anything still arriving gets 503 + Retry-After
            await decoder.close()
            await asyncio.to_thread(jobs.shutdown)  # waits for the embedded workers to hand their job back
            await backend.close()

    app = FastAPI(
        title="dyntta gateway",
        version=__version__,
        description="Test-time image enhancement (DynTTA) served by NVIDIA Triton: classify uploads with or "
        "without the enhancer, get enhanced images, and run corruption-robustness reports.",
        lifespan=lifespan,
        docs_url=None,  # served from local files by routes/web.py (no CDN: offline hosts are the norm)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.admission, app.state.decoder = admission, decoder
    install_error_handlers(app)

    def limit_for(path: str) -> int:
        return settings.max_zip_bytes if path.rstrip("/") == "/v1/robustness" else settings.max_upload_bytes

    def protected(path: str) -> bool:
        if path == "/v1" or path.startswith("/v1/"):
            return True
        if path == "/metrics":
            return not settings.public_metrics
        if path in ("/docs", "/openapi.json") or path.startswith("/docs/"):
            return not settings.public_docs
        return False

    # added last = outermost: request id, security headers and metrics see every response, including the
    # 401s, 403s and 413s answered (before any body is read) by the guards and the size limit
    app.add_middleware(AdmissionGate, admission=admission, paths=("/v1/classify", "/v1/enhance", "/v1/playground"))
    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    app.add_middleware(ApiKeyGuard, keys=settings.api_keys, protected=protected)
    if not settings.api_keys:
        hosts = settings.allowed_hosts
        allowed = (
            None
            if hosts and hosts.strip() == "*"
            else {h.strip().lower() for h in hosts.split(",") if h.strip()}
            if hosts
            else default_allowed_hosts(settings.host)
        )
        app.add_middleware(BrowserGuard, allowed_hosts=allowed)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(inference.router)
    app.include_router(robustness.router)
    app.include_router(playground.router)  # its lifespan (the corruption worker) nests inside the app's
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.mount("/docs/static", web.swagger_assets, name="swagger-ui")
    return app
