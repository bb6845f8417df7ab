"""Gateway over two Triton replicas vs one, and failover when a replica is SIGKILLed (issue 11).

    uv run python -m benchmarks.replicas [--model-repository model_repository] [--requests 1000]
        [--concurrency 16] [--repeats 3] [--json out.json]

Two bundled Tritons serve the same repository, A on 127.0.0.1 and B on 127.0.0.2 (same ports). The gateway
is ``python -m serve --triton-url ...`` in its own process, as deployed; the load generator is this process
(asyncio + httpx, ``--concurrency`` requests in flight, one small PNG per ``/v1/classify``).

* **Routing overhead**: p50 latency through a gateway over A alone vs over A and B, ``--repeats`` alternating
  runs of ``--requests`` each, the best p50 of each side kept (the machine is shared). The target is
  p50(two) - p50(one) <= 1 ms. On one machine two replicas share the same cores, so no throughput gain is
  expected. The pick + lease of the pool itself is also timed in-process (microseconds per call).
* **Failover**: ``--requests`` requests over A and B; after a quarter of them B's tritonserver gets SIGKILL;
  failed requests are counted (target 0). Then B is restarted on the same ports and the time until the
  gateway sends it traffic again is measured (target <= 10 s), from the restart call and from B being ready.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.provenance import Provenance
from serve.triton import TritonServer, free_port
from serve.triton.pool import ReplicaPool

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LoadRun:
    replicas: int
    requests: int
    failed: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def sample_png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Gateway:
    """``python -m serve`` over the given Triton gRPC addresses, in its own process."""

    def __init__(self, addresses: Sequence[str], state_dir: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "serve", "--port", str(self.port), "--log-level", "warning"]
        for address in addresses:
            command += ["--triton-url", address]
        env = {**os.environ, "DYNTTA_STATE_DIR": str(state_dir)}
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not get ready")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def replica_requests(self, address: str) -> float:
        match = re.search(
            rf'^dyntta_gateway_triton_replica_requests(?:_total)?{{replica="{re.escape(address)}"}} (\S+)$',
            self.metrics(),
            re.MULTILINE,
        )
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def load(
    url: str, png: bytes, requests: int, concurrency: int, on_progress: Callable[[int], None] | None = None
) -> tuple[list[float], list[int], float]:
    """``requests`` classify calls, ``concurrency`` in flight: latencies (s), statuses, wall seconds."""
    latencies: list[float] = []
    statuses: list[int] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in counter:
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))])
                    status = response.status_code
                except httpx.HTTPError:
                    status = -1
                latencies.append(time.perf_counter() - start)
                statuses.append(status)
                if on_progress is not None:
                    on_progress(len(statuses))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, statuses, time.perf_counter() - started


def summarise(replicas: int, latencies: list[float], statuses: list[int], seconds: float) -> LoadRun:
    ms = sorted(x * 1000 for x in latencies)
    return LoadRun(
        replicas=replicas,
        requests=len(statuses),
        failed=sum(s != 200 for s in statuses),
        seconds=round(seconds, 2),
        requests_per_s=round(len(statuses) / seconds, 1),
        p50_ms=round(statistics.median(ms), 2),
        p99_ms=round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    )


def pick_cost_us(addresses: Sequence[str], calls: int = 100_000) -> float:
    """Microseconds per pick + lease of the pool (the routing work per Triton call), replicas unprobed
    but marked up."""
    from serve.triton.pool import ReplicaState

    async def run() -> float:
        pool = ReplicaPool(list(addresses), [])
        for replica in pool.replicas:
            replica.state = ReplicaState.UP
        start = time.perf_counter()
        for _ in range(calls):
            picked = pool.pick()
            assert picked is not None
            async with pool.lease(picked):
                pass
        elapsed = time.perf_counter() - start
        await pool.close()
        return elapsed / calls * 1e6

    return round(asyncio.run(run()), 2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replicas",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-repository", default="model_repository", help="repository both replicas serve")
    parser.add_argument("--requests", type=int, default=1000, help="classify requests per run")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--repeats", type=int, default=3, help="alternating one/two-replica runs; best p50 kept")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    png = sample_png()
    provenance = Provenance.start("benchmarks.replicas", argv)
    http, grpc, metrics = free_port(), free_port(), free_port()
    a, b = (
        TritonServer(args.model_repository, host=host, http_port=http, grpc_port=grpc, metrics_port=metrics)
        for host in ("127.0.0.1", "127.0.0.2")
    )
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="dyntta-bench-replicas-") as tmp:
        try:
            a.start()
            b.start()
            one = Gateway([a.urls.grpc_address], Path(tmp) / "one")
            two = Gateway([a.urls.grpc_address, b.urls.grpc_address], Path(tmp) / "two")
            try:
                runs: dict[int, list[LoadRun]] = {1: [], 2: []}
                for gateway in (one, two):  # warm-up (labels, connections)
                    asyncio.run(load(gateway.url, png, 64, args.concurrency))
                for _ in range(args.repeats):
                    for gateway, n in [(one, 1), (two, 2)]:
                        lat, st, sec = asyncio.run(load(gateway.url, png, args.requests, args.concurrency))
                        runs[n].append(summarise(n, lat, st, sec))
                        print(json.dumps(asdict(runs[n][-1])), flush=True)
                best = {n: min(r, key=lambda x: x.p50_ms) for n, r in runs.items()}
                results["routing"] = {
                    "runs": {n: [asdict(x) for x in r] for n, r in runs.items()},
                    "best_p50_ms": {n: best[n].p50_ms for n in best},
                    "p50_overhead_two_vs_one_ms": round(best[2].p50_ms - best[1].p50_ms, 2),
                    "pick_and_lease_us": pick_cost_us([a.urls.grpc_address, b.urls.grpc_address]),
                }
                one.stop()

                # failover: kill B a quarter of the way through
                killed: dict[str, float] = {}

                def progress(done: int) -> None:
                    if not killed and done >= args.requests // 4:
                        assert b.pid is not None
                        os.kill(b.pid, signal.SIGKILL)
                        killed["at"] = time.monotonic()
                        killed["after"] = done

                lat, st, sec = asyncio.run(load(two.url, png, args.requests, args.concurrency, progress))
                failover = asdict(summarise(2, lat, st, sec))
                b_address = b.urls.grpc_address
                before = two.replica_requests(b_address)
                restart_called = time.monotonic()
                b.restart()
                b_ready = time.monotonic()

                async def until_b_serves() -> float:
                    async with httpx.AsyncClient(base_url=two.url, timeout=30) as client:
                        while two.replica_requests(b_address) <= before:
                            await client.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))])
                            if time.monotonic() - b_ready > 60:
                                return float("inf")
                    return time.monotonic()

                served = asyncio.run(until_b_serves())
                failover.update(
                    killed_after_requests=killed.get("after"),
                    restart_to_ready_s=round(b_ready - restart_called, 2),
                    ready_to_traffic_s=round(served - b_ready, 2),
                    restart_call_to_traffic_s=round(served - restart_called, 2),
                )
                results["failover"] = failover
                print(json.dumps(failover), flush=True)
            finally:
                two.stop()
                if one.process.poll() is None:
                    one.stop()
        finally:
            a.stop()
            b.stop()
    provenance.write(args.json, results)


if __name__ == "__main__":
    main()
