"""A bounded load run: 2,000 classify requests at concurrency 16 through the gateway and Triton, no errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from tests.serve.conftest import LiveGateway
from tests.serve.helpers import fmnist_raw, png_bytes

REQUESTS = 2000
CONCURRENCY = 16


def test_2000_requests_at_concurrency_16_without_errors(gateway: LiveGateway):
    raw, _ = fmnist_raw("test", 64)
    blobs = [png_bytes(a) for a in raw]

    async def run() -> tuple[list[int], list[float], float]:
        statuses: list[int] = []
        latencies: list[float] = []
        counter = iter(range(REQUESTS))
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits) as client:

            async def worker() -> None:
                for i in counter:
                    blob = blobs[i % len(blobs)]
                    start = time.perf_counter()
                    response = await client.post(
                        "/v1/classify",
                        params={"enhance": str(i % 2 == 0).lower()},
                        files=[("files", (f"{i}.png", blob, "image/png"))],
                    )
                    latencies.append(time.perf_counter() - start)
                    statuses.append(response.status_code)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return statuses, latencies, time.perf_counter() - start

    statuses, latencies, seconds = asyncio.run(run())
    errors = {s: statuses.count(s) for s in set(statuses) if s != 200}
    print(
        f"\n{REQUESTS} requests at concurrency {CONCURRENCY}: {REQUESTS / seconds:.0f} req/s, "
        f"p50 {1e3 * np.percentile(latencies, 50):.1f} ms, p99 {1e3 * np.percentile(latencies, 99):.1f} ms"
    )
    assert len(statuses) == REQUESTS and not errors, errors
