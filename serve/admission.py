"""Admission control for inference requests: a bounded number in flight, a bounded wait queue, fast 503s.

A request takes a slot before any decoding or Triton work. When every slot is taken it waits, but only if
fewer than ``max_waiting`` requests already wait, and not longer than ``wait_s``; otherwise it gets a 503
with ``Retry-After`` at once (no body is decoded, no Triton deadline is waited out). While the gateway
drains for shutdown every new request gets a 503 too, so a load balancer moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from serve.errors import Overloaded, ShuttingDown


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

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one inference slot for the body of the ``async with``."""
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance", self.retry_after_s)
        if self._slots.locked():
            if self.waiting >= self.max_waiting:
                raise Overloaded(
                    f"gateway saturated: {self.in_flight} requests in flight and {self.waiting} waiting; retry later",
                    self.retry_after_s,
                )
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
