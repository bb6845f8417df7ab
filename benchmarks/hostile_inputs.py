"""Hostile inputs against a live gateway: what each answer costs the server.

    python -m benchmarks.hostile_inputs [--model-repository model_repository]

Starts ``python -m serve`` (bundled Triton, the committed repository, free ports, a temporary state
directory, an API key, no job workers), builds each hostile payload here, sends it once and prints the
case, the HTTP status, the time to the answer and the CPU seconds the gateway and its decode processes
spent on it (``/proc``; Triton excluded). The cases are those of docs/RESULTS.md, "Hostile input".
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from dyntta.cli import ArgumentParser

KEY = "hostile-bench-key"
REQUEST_PIXEL_BUDGET = 20_000_000  # so that two 16 M-px images exceed it


# --- payloads ----------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def rle8_bmp(width: int, height: int) -> bytes:
    """A 1,084-byte RLE8 BMP: one pixel, end-of-line, end-of-bitmap. Pillow's pure-Python RLE decoder pads
    the row one byte per loop iteration, so the declared width is what costs (seconds for 36 M)."""
    data = b"\x01\x00\x00\x00\x00\x01"
    palette = b"".join(bytes((i, 255 - i, (i * 7) % 256, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


def header_bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 16  # signature (8), then the chunk's length and type
    data[ihdr : ihdr + 8] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 13 : ihdr + 17] = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])).to_bytes(4, "big")
    return bytes(data)


def jpeg_fill_bomb(fill: int = 4_000_000) -> bytes:
    """A valid 8x8 JPEG with ``fill`` 0xFF bytes after SOI (legal fill; Pillow walks them in Python)."""
    jpeg = encode(Image.new("RGB", (8, 8), (90, 10, 200)), "JPEG")
    return jpeg[:2] + b"\xff" * fill + jpeg[2:]


def zip_of(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_bomb(megabytes: int = 300) -> bytes:
    """One member of ``megabytes`` MB of zeros, about 0.3 MB compressed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("Coat/0.png", "w") as member:
        chunk = bytes(1 << 20)
        for _ in range(megabytes):
            member.write(chunk)
    return buffer.getvalue()


# --- measuring ---------------------------------------------------------------------------------------------


def tree_cpu_s(root: int) -> float:
    """utime + stime (and reaped children's) of ``root`` and its descendants, Triton excluded."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is the state (stat field 3)
        if name != "tritonserver":
            parents[int(entry)] = int(fields[1])
            stats[int(entry)] = fields
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    ticks = sum(sum(int(v) for v in stats[pid][11:15]) for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    case: str
    status: str
    seconds: float
    cpu_s: float
    detail: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unauthenticated_announced_body(port: int) -> tuple[str, str]:
    """Headers of a 9 MB upload without the key, and no body: the answer must come anyway."""
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 9000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(4096).decode("latin-1")
    return answer.split(" ", 2)[1], answer.split("\r\n", 1)[0]


@contextmanager
def live_gateway(model_repository: str, *, api_key: str | None) -> Iterator[tuple[int, int]]:
    """``python -m serve`` on a free port until ready: (its pid, its port)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hostile-") as state:
        command = [
            sys.executable,
            "-m",
            "serve",
            f"--port={port}",
            f"--model-repository={model_repository}",
            f"--state-dir={state}",
            "--workers=0",  # the refused uploads never reach a worker
            f"--max-request-pixels={REQUEST_PIXEL_BUDGET}",
            "--log-level=warning",
        ]
        gateway = subprocess.Popen([*command, f"--api-key={api_key}"] if api_key else command)
        try:
            deadline = time.monotonic() + 300
            while True:
                if gateway.poll() is not None:
                    raise SystemExit(f"python -m serve exited with {gateway.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("gateway not ready after 300 s")
                time.sleep(0.5)
            yield gateway.pid, port
        finally:
            gateway.terminate()
            gateway.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.hostile_inputs", description=__doc__)
    parser.add_argument("--model-repository", default="model_repository", help="the repository Triton serves")
    args = parser.parse_args(argv)
    with live_gateway(args.model_repository, api_key=KEY) as (pid, port):
        results, healthy = run_cases(pid, port)
    # the browser guards (Host allow-list, Origin check) are installed only without a key
    with live_gateway(args.model_repository, api_key=None) as (pid, port):
        results += run_browser_cases(pid, port)
    print("| case | status | time to answer | server CPU | answer |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r.case} | {r.status} | {1e3 * r.seconds:.1f} ms | {r.cpu_s:.2f} s | {r.detail} |")
    print(f"afterwards a normal image: {healthy}")
    return 0 if healthy == 200 and not any(r.status.startswith("5") for r in results) else 1


def measure(pid: int, case: str, send: Callable[[], httpx.Response]) -> Result:
    cpu, start = tree_cpu_s(pid), time.perf_counter()
    response = send()
    seconds, cpu_s = time.perf_counter() - start, tree_cpu_s(pid) - cpu
    return Result(case, str(response.status_code), seconds, cpu_s, response.text[:90].replace("\n", " "))


def digit_png() -> bytes:
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 10:18] = 200
    return encode(Image.fromarray(digit), "PNG")


def run_browser_cases(pid: int, port: int) -> list[Result]:
    files = [("files", ("d.png", digit_png(), "image/png"))]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        return [
            measure(
                pid, "no key: Host: evil.example", lambda: client.get("/v1/models", headers={"Host": "evil.example"})
            ),
            measure(
                pid,
                "no key: cross-site POST, Origin: https://evil.example",
                lambda: client.post("/v1/classify", files=files, headers={"Origin": "https://evil.example"}),
            ),
        ]


def run_cases(pid: int, port: int) -> tuple[list[Result], int]:
    """The cases with the key set; and the status of a normal image sent afterwards."""
    png8 = digit_png()
    png16 = encode(
        Image.fromarray(np.asarray(Image.open(io.BytesIO(png8))).astype(np.uint16) * 257), "PNG"
    )  # "I;16", the same picture
    big = encode(Image.new("L", (4000, 4000), 7), "PNG")  # 16 M px, a few KB
    bmp = rle8_bmp(36_000_000, 1)
    form = {"corruptions": "fog", "severities": "1"}

    def classify(
        files: list[tuple[str, tuple[str, bytes, str]]], **kwargs: object
    ) -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post("/v1/classify", files=files, **kwargs)  # type: ignore[arg-type]

    def robustness(name: str, body: bytes, kind: str = "application/zip") -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post("/v1/robustness", data=form, files={"file": (name, body, kind)})

    cases: list[tuple[str, Callable[[httpx.Client], httpx.Response]]] = [
        ("warm-up: 8-bit PNG digit", classify([("files", ("d.png", png8, "image/png"))])),
        (f"RLE8 BMP, {len(bmp):,} B, header 36,000,000 x 1", classify([("files", ("b.bmp", bmp, "image/bmp"))])),
        ("64 such BMPs in one request", classify([("files", (f"{i}.bmp", bmp, "image/bmp")) for i in range(64)])),
        (
            "PNG header 7000 x 7000 (49 M px)",
            classify([("files", ("l.png", header_bomb_png(7000, 7000), "image/png"))]),
        ),
        (
            f"2 x 16 M-px PNG ({len(big) // 1024} KB each), budget 20 M px",
            classify([("files", (f"{i}.png", big, "image/png")) for i in range(2)]),
        ),
        ("8x8 JPEG + 4 MB of 0xFF fill", classify([("files", ("f.jpg", jpeg_fill_bomb(), "image/jpeg"))])),
        ("16-bit greyscale PNG", classify([("files", ("g.png", png16, "image/png"))])),
        ("-F file=@x.png (singular field)", classify([("file", ("x.png", png8, "image/png"))])),
        ("GET /v1/models without the key", lambda c: c.get("/v1/models", headers={"X-API-Key": ""})),
        ("GET /metrics without the key", lambda c: c.get("/metrics", headers={"X-API-Key": ""})),
        ("zip: member path ../../etc/Coat/x.png", robustness("e.zip", zip_of({"../../etc/Coat/x.png": png8}))),
        ("zip: 300 MB of zeros in one member (limit 500 MB)", robustness("z.zip", zip_bomb(300))),
        ("zip: 600 MB of zeros in one member", robustness("y.zip", zip_bomb(600))),
        ("zip: truncated archive", robustness("t.zip", zip_of({"Coat/0.png": png8})[:-30])),
        ("zip field with plain text", robustness("n.zip", b"plain text", "text/plain")),
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=60) as client:
        results = [measure(pid, case, lambda send=send: send(client)) for case, send in cases]  # type: ignore[misc]
        cpu, start = tree_cpu_s(pid), time.perf_counter()
        status, line = unauthenticated_announced_body(port)
        seconds, cpu_s = time.perf_counter() - start, tree_cpu_s(pid) - cpu
        results.append(Result("POST announcing 9 MB, no key, headers only", status, seconds, cpu_s, line))
        healthy = client.post("/v1/classify", files=[("files", ("d.png", png8, "image/png"))]).status_code
    return results, healthy


if __name__ == "__main__":
    raise SystemExit(main())
