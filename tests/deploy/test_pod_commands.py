"""Run what the cpu overlay's pods run, on this machine: the init container's copy, the Triton container's
command, the gateway's command with the ConfigMap's environment, and one pass of the worker; then ask the
probes' paths on the probes' ports. Changed from the manifests, and only these: ports (free ones instead of
8000-8002/8080), bind address (loopback instead of 0.0.0.0), paths (temporary directories instead of volumes),
the Triton URL (127.0.0.1 instead of the Service's DNS name), and the state URL (SQLite, the store's other
backend, instead of the PostgreSQL Secret)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_checks import ROOT, Obj, PodTemplate, by_kind, pod_templates, render


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _template(objs: list[Obj], owner: str) -> PodTemplate:
    return next(t for t in pod_templates(objs) if t.owner == owner)


def _substitute(args: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        out.append(f"{flag}={values[flag]}" if sep and flag in values else values.get(arg, arg))
    return out


def _environment(objs: list[Obj], container: Obj, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNTTA_")}
    for source in container.get("envFrom", []):
        env.update(by_kind(objs, "ConfigMap")[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env.update(overrides)
    return env


def _wait_http(url: str, timeout: float, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in reversed(processes):
        _stop(process)


def test_cpu_overlay_pods_start_and_answer_their_probes(tmp_path: Path, started: list) -> None:
    objs = render("k8s/overlays/cpu")
    triton_pod = _template(objs, "Deployment/dyntta-triton")

    # init container: the repository into the pod's volume
    init = triton_pod.container("model-repository")
    models = tmp_path / "models"
    copy = _substitute(init["args"], {"/app/model_repository": str(ROOT / "model_repository"), "/models": str(models)})
    subprocess.run([sys.executable, *init["command"][1:], *copy], check=True, timeout=60)
    assert {p.name for p in models.iterdir()} >= {"dyntta", "recognizer", "enhancer"}

    # Triton
    triton = triton_pod.container("triton")
    ports = {name: _free_port() for name in ("http", "grpc", "metrics")}
    args = _substitute(
        triton["args"],
        {
            "--model-repository": str(models),
            "--host": "127.0.0.1",
            "--http-port": str(ports["http"]),
            "--grpc-port": str(ports["grpc"]),
            "--metrics-port": str(ports["metrics"]),
        },
    )
    assert triton["command"][:2] == ["python", "-m"]
    process = subprocess.Popen([sys.executable, *triton["command"][1:], *args], cwd=tmp_path, start_new_session=True)
    started.append(process)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _wait_http(f"http://127.0.0.1:{ports['http']}{triton[probe]['httpGet']['path']}", 180, process) == 200

    # gateway
    gateway = _template(objs, "Deployment/dyntta-gateway").container("gateway")
    state = tmp_path / "state"
    overrides = {
        "DYNTTA_TRITON_URL": f"grpc://127.0.0.1:{ports['grpc']}",
        "DYNTTA_STATE_DIR": str(state),
        "DYNTTA_STATE_URL": f"sqlite:///{state / 'jobs.sqlite3'}",
        "DYNTTA_API_KEY": "k8s-secret-stand-in",
    }
    env = _environment(objs, gateway, overrides)
    assert env["DYNTTA_WORKERS"] == "0"
    port = _free_port()
    args = _substitute(gateway["args"], {"--host": "127.0.0.1", "--port": str(port)})
    process = subprocess.Popen(
        [sys.executable, *gateway["command"][1:], *args], cwd=tmp_path, env=env, start_new_session=True
    )
    started.append(process)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _wait_http(f"http://127.0.0.1:{port}{gateway[probe]['httpGet']['path']}", 120, process) == 200

    # one pass of the worker with the same settings (no job waiting: it exits 0)
    worker = _template(objs, "Deployment/dyntta-worker").container("worker")
    result = subprocess.run(
        [sys.executable, *worker["command"][1:], *worker.get("args", []), "--once"],
        cwd=tmp_path,
        env=_environment(objs, worker, overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
