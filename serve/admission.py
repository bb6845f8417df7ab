"""Admission control for inference requests: a bounded number in flight, a bounded wait queue, fast 503s.

A request takes a slot before any decoding or Triton work. When every slot is taken it waits, but only if
fewer than ``max_waiting`` requests already wait, and not longer than ``wait_s``; otherwise it gets a 503
with ``Retry-After`` at once (no body is decoded, no Triton deadline is waited out). While the gateway
drains for shutdown every new request gets a 503 too, so a load balancer moves on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.errors import ApiError, Overloaded, ShuttingDown


class Admission:
    def __init__(self, max_inflight: int, max_waiting: int, wait_s: float, retry_after_s: int = 1) -> None:
        self.max_inflight = max(1, max_inflight)
        self.max_waiting = max(0, max_waiting)
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.waiting = 0
        self.draining = False
        self._slots = asyncio.Semaphore(self.max_inflight)

    def refusal(self) -> ApiError | None:
        """The error a new request gets right now (draining, or every slot taken and the queue full)."""
        if self.draining:
            return ShuttingDown("the gateway is shutting down; retry on another instance", self.retry_after_s)
        if self._slots.locked() and self.waiting >= self.max_waiting:
            return Overloaded(
                f"gateway saturated: {self.in_flight} requests in flight and {self.waiting} waiting; retry later",
                self.retry_after_s,
            )
        return None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one inference slot for the body of the ``async with``."""
        # draining is checked at arrival only (AdmissionGate): a request that came in before SIGTERM, body
        # still uploading, is served, as a graceful shutdown promises
        if self._slots.locked() and self.waiting >= self.max_waiting:
            raise Overloaded(
                f"gateway saturated: {self.in_flight} requests in flight and {self.waiting} waiting; retry later",
                self.retry_after_s,
            )
        if self._slots.locked():
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.wait_s)
            except TimeoutError:
                raise Overloaded(
                    f"gateway saturated: no inference slot free within {self.wait_s:g} s; retry later",
                    self.retry_after_s,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()


class AdmissionGate:
    """ASGI fast path: a request to an inference route that would be refused anyway gets its 503 before
    its body is read (FastAPI parses the whole multipart form before the route can take a slot)."""

    def __init__(self, app: ASGIApp, admission: Admission, paths: Collection[str]) -> None:
        self.app = app
        self.admission = admission
        self.paths = set(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = (
            self.admission.refusal()
            if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths
            else None
        )
        if refused is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {"code": refused.code, "message": refused.message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (refused.headers or {}).items()]
        await send({"type": "http.response.start", "status": refused.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
