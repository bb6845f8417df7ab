"""An already running server (the NGC container, a Kubernetes Service): wait until it is ready."""

from __future__ import annotations

import time
from collections.abc import Sequence

from serve.triton.errors import ModelLoadError, TritonError
from serve.triton.probes import failed_models, grpc_ready, http_ready, http_status
from serve.triton.urls import TritonURLs, parse_triton_url


def connect(
    url: str,
    *,
    http_url: str | None = None,
    grpc_url: str | None = None,
    metrics_url: str | None = None,
    models: Sequence[str] = (),
    timeout: float = 30.0,
) -> TritonURLs:
    """Wait until the server at ``url`` and ``models`` are ready; return its URLs.

    ``url`` follows :func:`~serve.triton.urls.parse_triton_url` (no scheme = gRPC); readiness is asked over
    the protocol it names. The other URLs follow Triton's standard port layout unless given.
    """
    urls = parse_triton_url(url, http_url=http_url, grpc_url=grpc_url, metrics_url=metrics_url)
    over_grpc = urls.protocol == "grpc"
    deadline = time.monotonic() + timeout
    while True:
        if grpc_ready(urls.grpc_address, models) if over_grpc else http_ready(urls.http_url, models):
            return urls
        if time.monotonic() >= deadline:
            live = not over_grpc and http_status(urls.http_url + "/v2/health/live") == 200
            detail = failed_models(urls.http_url) if live else {}
            if detail:
                raise ModelLoadError(detail)
            raise TritonError(f"Triton at {url} is not ready (models {list(models)}) after {timeout:.0f} s")
        time.sleep(0.2)
