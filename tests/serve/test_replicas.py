"""Issue 11 section 1: the gateway over two real bundled Tritons.

Replica A listens on 127.0.0.1, replica B on 127.0.0.2 with the *same* ports: that is also what a DNS name
resolving to two addresses looks like (a Kubernetes headless Service), tested through the pool's resolver.
The kill test sends the issue's 1,000 classify requests (``DYNTTA_REPLICA_TEST_REQUESTS``) at concurrency 16
while replica B is SIGKILLed a quarter of the way through (about 5 s on 2 shared cores with the test's tiny
models); ``benchmarks/replicas.py`` measures the same on the committed models.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serve.triton import TritonServer, free_port
from serve.triton.pool import ReplicaPool, ReplicaState
from tests.serve.conftest import GatewayFactory, LiveGateway

MODELS = ["dyntta", "recognizer", "enhancer"]
REQUESTS = int(os.environ.get("DYNTTA_REPLICA_TEST_REQUESTS", "1000"))


@pytest.fixture(scope="module")
def replicas(gateway_repository: Path) -> Iterator[tuple[TritonServer, TritonServer]]:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    a = TritonServer(gateway_repository, host="127.0.0.1", startup_timeout=180, **ports)
    b = TritonServer(gateway_repository, host="127.0.0.2", startup_timeout=180, **ports)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def pair_gateway(make_gateway: GatewayFactory, replicas: tuple[TritonServer, TritonServer]) -> LiveGateway:
    a, b = replicas
    return make_gateway(triton_grpc=[a.urls.grpc_address, b.urls.grpc_address])


def replica_metric(text: str, name: str, address: str, state: str | None = None) -> float:
    labels = f'replica="{address}"' + (f',state="{state}"' if state else "")
    match = re.search(rf"^dyntta_gateway_triton_replica_{name}(?:_total)?{{{labels}}} (\S+)$", text, re.MULTILINE)
    assert match, f"no {name} series for {address} in /metrics"
    return float(match.group(1))


def classify(client: httpx.Client, png: bytes) -> int:
    try:
        return client.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))]).status_code
    except httpx.HTTPError:
        return -1


def test_both_replicas_serve_and_are_reported(pair_gateway: LiveGateway, replicas, sample_png: bytes):
    a, b = (r.urls.grpc_address for r in replicas)
    with pair_gateway.client() as client, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: classify(client, sample_png), range(48)))
        assert statuses == [200] * 48
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = client.get("/metrics").text
    for address in (a, b):
        # least-outstanding-first spreads concurrent requests over both replicas
        assert replica_metric(metrics, "requests", address) >= 8
        assert replica_metric(metrics, "errors", address) == 0
        assert replica_metric(metrics, "state", address, "up") == 1
        assert replica_metric(metrics, "state", address, "down") == 0


def test_sigkill_of_one_replica_fails_no_request_and_the_restart_takes_traffic(
    pair_gateway: LiveGateway, replicas: tuple[TritonServer, TritonServer], sample_png: bytes
):
    a, b = replicas
    b_address = b.urls.grpc_address
    statuses: list[int] = []
    with pair_gateway.client(limits=httpx.Limits(max_connections=16)) as client:

        def worker(count: int) -> None:
            for _ in range(count):
                statuses.append(classify(client, sample_png))

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(worker, REQUESTS // 16) for _ in range(16)]
            while len(statuses) < REQUESTS // 4:
                time.sleep(0.01)
            assert b.pid is not None
            os.kill(b.pid, signal.SIGKILL)  # the server only: as a crash, not a clean stop
            killed_at = len(statuses)
            at_kill = client.get("/metrics").text
            assert replica_metric(at_kill, "requests", b_address) > 0  # B was taking traffic
            for future in futures:
                future.result()
        assert len(statuses) == REQUESTS - REQUESTS % 16
        failed = [s for s in statuses if s != 200]
        assert failed == [], f"{len(failed)} failed requests ({set(failed)}), kill after {killed_at}"
        metrics = client.get("/metrics").text
        assert replica_metric(metrics, "state", b_address, "down") == 1
        assert replica_metric(metrics, "errors", b_address) >= 1
        assert replica_metric(metrics, "retried", b_address) >= 1  # in-flight calls on B went to A
        assert client.get("/readyz").status_code == 200  # one replica serving all models is enough

        # the restart on the same ports takes traffic again within 10 s
        before = replica_metric(metrics, "requests", b_address)
        b.restart()
        restarted = time.monotonic()
        while replica_metric(client.get("/metrics").text, "requests", b_address) <= before:
            assert time.monotonic() - restarted < 10, "the restarted replica got no traffic within 10 s"
            assert classify(client, sample_png) == 200
        assert replica_metric(client.get("/metrics").text, "state", b_address, "up") == 1


def test_readyz_is_503_only_when_no_replica_serves(
    make_gateway: GatewayFactory, replicas: tuple[TritonServer, TritonServer]
):
    a, _ = replicas
    nowhere = f"127.0.0.1:{free_port()}"
    gateway = make_gateway(triton_grpc=[a.urls.grpc_address, nowhere])
    with gateway.client() as client:
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert replica_metric(metrics, "state", nowhere, "down") == 1
    alone = make_gateway(triton_grpc=[nowhere])
    with alone.client() as client:
        assert client.get("/readyz").status_code == 503


def test_a_name_resolving_to_both_addresses_is_two_replicas(replicas: tuple[TritonServer, TritonServer]):
    a, b = replicas
    port = int(a.urls.grpc_address.rsplit(":", 1)[1])
    # what getaddrinfo answers for a headless Service; the addresses are the two real servers
    resolver = {"triton-headless": ["127.0.0.1", "127.0.0.2"]}

    async def run() -> None:
        pool = ReplicaPool([f"triton-headless:{port}"], MODELS, resolver=lambda host, _: resolver[host])
        try:
            await pool.start()
            assert [r.address for r in pool.replicas] == [a.urls.grpc_address, b.urls.grpc_address]
            assert all(r.state is ReplicaState.UP for r in pool.replicas)
            first = pool.pick()
            assert first is not None
            async with pool.lease(first):
                second = pool.pick()  # least outstanding: the other one
                assert second is not None and second is not first
            resolver["triton-headless"] = ["127.0.0.2"]  # the Service lost a pod
            pool._resolve(pool._wanted())
            assert [r.address for r in pool.replicas] == [b.urls.grpc_address]
        finally:
            await pool.close()

    asyncio.run(run())
