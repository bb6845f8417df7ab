"""Pure ASGI middleware: body size limit and Prometheus request metrics.

Pure ASGI (not BaseHTTPMiddleware) so the body is never buffered by the middleware itself and the limit
holds for chunked uploads that carry no Content-Length.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it instead of turning it into a 400."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


def _error_response(status: int, code: str, message: str) -> tuple[Message, Message]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimit:
    """413 for bodies over the limit: from Content-Length before reading anything, or as soon as the
    streamed body passes the limit. ``limit_for(path)`` lets zip uploads have a larger budget."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        message = f"request body exceeds the limit of {limit / 1024 / 1024:g} MB"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            for part in _error_response(413, "payload_too_large", message):
                await send(part)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(message)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                for part in _error_response(413, "payload_too_large", message):
                    await send(part)


def deadline_buckets(deadline_s: float) -> tuple[float, ...]:
    """Latency buckets from 0.5 ms up to (and including) the Triton deadline, so slow calls are not all
    lumped into +Inf."""
    base = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120]
    return (*[b for b in base if b < deadline_s], deadline_s)


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app, so tests can build many)."""

    def __init__(self, triton_deadline_s: float = 30.0) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dyntta_gateway_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "dyntta_gateway_errors", "HTTP responses with status >= 400", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "dyntta_gateway_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.inference = Histogram(
            "dyntta_gateway_triton_duration_seconds",
            "time spent waiting on Triton",
            ["model"],
            buckets=deadline_buckets(triton_deadline_s),
            registry=self.registry,
        )
        # set_function'ed to the admission queue and decode pool once they exist (app lifespan)
        self.inference_waiting = Gauge(
            "dyntta_gateway_inference_waiting", "requests waiting for an inference slot", registry=self.registry
        )
        self.inference_in_flight = Gauge(
            "dyntta_gateway_inference_in_flight", "requests holding an inference slot", registry=self.registry
        )
        self.decode_waiting = Gauge(
            "dyntta_gateway_decode_waiting", "requests waiting for a decoding process", registry=self.registry
        )
        # how close decodes run to the CPU limit; a refusal from the headers shows as ~0
        self.decode_cpu = Histogram(
            "dyntta_gateway_decode_cpu_seconds",
            "user CPU time of each task in a decoding process (the limited clock)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.images = Counter(
            "dyntta_gateway_images", "images classified or enhanced", ["endpoint"], registry=self.registry
        )
        self.in_flight = Gauge(
            "dyntta_gateway_requests_in_flight", "HTTP requests being handled", registry=self.registry
        )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def recording_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            # the route template (set by the router) keeps label cardinality bounded, whatever the URL
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
            if status >= 400:
                self.metrics.errors.labels(route, str(status)).inc()
