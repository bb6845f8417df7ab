"""SIGTERM (issue 10 item 10): ``kill -TERM`` of ``python -m serve`` drains like Ctrl-C: the request being
uploaded finishes with 200, the process exits 0, the bundled Triton is stopped, no temporary file is left."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serve.triton import free_port


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_sigterm_drains_and_stops_everything(gateway_repository: Path, tmp_path: Path, sample_png: bytes):
    repository = tmp_path / "repo-sigterm"
    shutil.copytree(gateway_repository, repository)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "serve", "--port", str(port), "--model-repository", str(repository)]
    command += ["--state-dir", str(tmp_path / "state")]
    gateway = subprocess.Popen(command, env={**os.environ, "TMPDIR": str(scratch)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert gateway.poll() is None, "python -m serve exited during start-up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "python -m serve did not become ready"
            time.sleep(0.5)

        boundary = b"sigterm"
        body = (
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + sample_png + b"\r\n--" + boundary + b"--\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary="
                + boundary
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body[:100]
            )
            time.sleep(0.5)
            gateway.send_signal(signal.SIGTERM)  # the request is in flight: its body is half sent
            time.sleep(0.5)
            sock.sendall(body[100:])
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert gateway.wait(timeout=60) == 0
        assert _processes_mentioning(str(repository)) == [], "tritonserver or a stub outlived the gateway"
        # temporary directories (the decode pool's forkserver socket dir, Triton's) are gone; a one-line
        # ".ses" marker file some dependency writes to TMPDIR at import is not ours to remove
        assert [p for p in scratch.iterdir() if p.is_dir()] == [], "temporary directories left behind"
    finally:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait()
