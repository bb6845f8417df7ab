"""Faults: Triton absent -> 503 with a clear message, recovery when it comes up, 503 again when it goes
away; a Triton deadline -> 504. The gateway itself never fails."""

from __future__ import annotations

import time
from pathlib import Path

from serve.triton import TritonServer, free_port
from tests.serve.conftest import GatewayFactory


def classify(client, png: bytes):
    return client.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))])


def test_triton_down_is_503_and_the_gateway_recovers(
    make_gateway: GatewayFactory, gateway_repository: Path, sample_png: bytes
):
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    gateway = make_gateway(triton_grpc=f"127.0.0.1:{ports['grpc_port']}")  # nothing listens there yet
    server = TritonServer(gateway_repository, startup_timeout=180, **ports)
    with gateway.client() as client:
        down = classify(client, sample_png)
        assert down.status_code == 503, down.text
        assert "unreachable" in down.json()["error"]["message"] and down.headers["retry-after"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["triton_live"] is False
        assert client.get("/healthz").status_code == 200
        try:
            server.start()
            deadline = time.monotonic() + 30
            while (response := classify(client, sample_png)).status_code != 200:
                assert response.status_code == 503 and time.monotonic() < deadline, response.text
                time.sleep(0.2)
            assert client.get("/readyz").json()["ready"] is True
        finally:
            server.stop()
        gone = classify(client, sample_png)
        assert gone.status_code == 503, gone.text
        enhance = client.post("/v1/enhance", files={"file": ("a.png", sample_png, "image/png")})
        assert enhance.status_code == 503


def test_triton_deadline_is_504(make_gateway: GatewayFactory, sample_png: bytes):
    gateway = make_gateway(triton_timeout_s=0.00005)
    with gateway.client() as client:
        response = classify(client, sample_png)
    assert response.status_code == 504, response.text
    assert "did not answer" in response.json()["error"]["message"]
