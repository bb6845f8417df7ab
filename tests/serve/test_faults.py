"""Faults: Triton absent -> 503 with a clear message, recovery when it comes up, 503 again when it goes
away; a Triton deadline -> 504; ``python -m serve`` restarts a bundled Triton killed with SIGKILL (issue 10
item 7). The gateway itself never fails."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest

from serve.triton import TritonServer, free_port
from tests.serve.conftest import GatewayFactory
from tests.serve.helpers import start_serve


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


def _readyz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def _tritonservers_under(pid: int) -> list[int]:
    """tritonserver processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"tritonserver" in command.split(b"\0")[0]:
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
def test_python_m_serve_restarts_a_killed_triton(gateway_repository: Path, tmp_path: Path, sample_png: bytes):
    """kill -9 of the bundled Triton -> /readyz 503, then 200 within 30 s, and a classify succeeds."""
    port = free_port()
    process = start_serve(gateway_repository, tmp_path / "var", port)
    try:
        deadline = time.monotonic() + 240
        while _readyz(port) != 200:
            assert process.poll() is None and time.monotonic() < deadline, "python -m serve did not get ready"
            time.sleep(0.3)
        (first,) = _tritonservers_under(process.pid)
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        while Path(f"/proc/{first}").exists():  # reaped by the supervisor
            assert time.monotonic() - killed < 10
            time.sleep(0.02)
        statuses = []
        while (status := _readyz(port)) != 200 or 503 not in statuses:
            statuses.append(status)
            assert time.monotonic() - killed < 30, f"/readyz not back to 200 within 30 s: {statuses[-5:]}"
            time.sleep(0.1)
        assert 503 in statuses and set(statuses) <= {503}, statuses  # 503 meanwhile, never a gateway failure
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            response = client.post("/v1/classify", files=[("files", ("a.png", sample_png, "image/png"))])
        assert response.status_code == 200, response.text
        (second,) = _tritonservers_under(process.pid)
        assert second != first
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        assert _tritonservers_under(process.pid) == [] and not Path(f"/proc/{second}/cmdline").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
