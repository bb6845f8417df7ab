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
from serve.config import Settings
from serve.errors import install_error_handlers
from serve.inference import TritonBackend
from serve.jobs import JobManager, triton_classifiers
from serve.middleware import BodySizeLimit, Metrics, MetricsMiddleware
from serve.routes import health, inference, robustness, web

log = logging.getLogger("serve")
WEB_DIR = Path(__file__).parent / "web"


def create_app(settings: Settings | None = None, triton_grpc: str | Sequence[str] | None = None) -> FastAPI:
    """Build the gateway. ``triton_grpc`` (one or more Triton URLs, see ``serve.triton.urls``; host:port is
    gRPC) overrides ``settings.triton_url``."""
    settings = settings or Settings.from_env()
    url = triton_grpc or settings.triton_url
    if not url:
        raise ValueError("no Triton gRPC address: pass triton_grpc or set settings.triton_url")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Pillow's own bomb guard (it raises at twice this); decode_to_model_input refuses at 1x itself.
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        loop = asyncio.get_running_loop()
        backend = TritonBackend(
            url,
            models=[settings.ensemble_model, settings.recognizer_model, settings.enhancer_model],
            timeout_s=settings.triton_timeout_s,
            max_inflight=settings.max_inflight,
            registry=metrics.registry,  # per-replica request counts, errors, state
        )
        await backend.start()

        jobs = JobManager(
            settings.state_dir,
            triton_classifiers(
                backend,
                loop,
                ensemble=settings.ensemble_model,
                recognizer=settings.recognizer_model,
                chunk=settings.job_batch_size,
            ),
            max_active=settings.max_queued_jobs,
            batch_size=256,
            header=lambda: {
                "served_by": {
                    "gateway": f"dyntta {__version__}",
                    "triton": backend.url,
                    "ensemble": settings.ensemble_model,
                    "recognizer": settings.recognizer_model,
                }
            },
            on_finish=lambda state: metrics.jobs.labels(state).inc(),
        )
        app.state.backend, app.state.jobs = backend, jobs
        log.info("gateway ready: Triton gRPC at %s, state in %s", backend.url, settings.state_dir)
        try:
            yield
        finally:
            # the worker thread may be waiting on this loop for a Triton answer: shut it down off-loop
            await asyncio.to_thread(jobs.shutdown)
            await backend.close()

    app = FastAPI(
        title="dyntta gateway",
        version=__version__,
        description="Test-time image enhancement (DynTTA) served by NVIDIA Triton: classify uploads with or "
        "without the enhancer, get enhanced images, and run corruption-robustness reports.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)

    def limit_for(path: str) -> int:
        return settings.max_zip_bytes if path.rstrip("/") == "/v1/robustness" else settings.max_upload_bytes

    # added last = outermost: metrics see every response, including the 413s of the size limit
    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(inference.router)
    app.include_router(robustness.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    return app
