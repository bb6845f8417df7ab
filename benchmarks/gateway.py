"""Gateway benchmark, one run: the gateway vs direct Triton HTTP (latency), and vs a hand-written FastAPI +
PyTorch-eager service of the same models (throughput).

    python -m benchmarks.gateway [--recognizer checkpoints/fashion-mnist/recognizer] [--enhancer CKPT] \\
        [--requests 600] [--repeats 3] [--json out.json]

What runs, each in its own process so that the load generator does not share a GIL with a server:

- Triton (bundled, ``serve.triton``) on a repository exported here from the given checkpoints
  (``export.build.export_repository``; identity enhancer without ``--enhancer``);
- the gateway, ``python -m serve --triton-url grpc://...`` (the product);
- ``eager``: what users would write by hand, ``uvicorn benchmarks.gateway:eager_app``: FastAPI, a sync
  endpoint that decodes the upload with the same contract and runs enhancer -> recognizer in PyTorch eager,
  one request at a time per worker thread.

Requests: one real Fashion-MNIST test image (28x28 PNG, resized by the servers) to ``/v1/classify`` (gateway,
ensemble, top-5) and ``/classify`` (eager); the same image's model input (uint8 [1, 32, 32, 3], binary
tensor extension) to Triton's ``/v2/models/dyntta/infer``. The load generator is a minimal asyncio HTTP/1.1
client with pre-encoded requests on keep-alive connections (one per concurrent worker), so its own cost is
small and equal for all targets. Each cell is measured ``--repeats`` times, targets alternating within a
round; the table shows the median over rounds, and the comparisons (gateway p50 minus Triton p50,
throughput ratios) are taken within each round, then their median, since the shared machine's load drifts
between rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, UploadFile

from benchmarks.provenance import Provenance

REPO_ROOT = Path(__file__).resolve().parent.parent
CONCURRENCIES = (1, 8)


# --- the hand-written baseline service ----------------------------------------------------------------


def eager_app() -> FastAPI:
    """FastAPI + PyTorch eager, as a user would write it (uvicorn --factory)."""
    import torch
    from PIL import Image
    from torch import nn

    from dyntta.data import to_model_input
    from dyntta.models import load_recognizer

    recognizer = load_recognizer(os.environ["BENCH_RECOGNIZER"])
    enhancer: nn.Module = nn.Identity()
    if os.environ.get("BENCH_ENHANCER"):
        from dyntta.enhancer import load_enhancer

        enhancer = load_enhancer(os.environ["BENCH_ENHANCER"])
    model = nn.Sequential(enhancer, recognizer).eval()
    size = recognizer.config.input_size
    classes = recognizer.config.classes
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/classify")
    def classify(file: UploadFile = File(...), top_k: int = 5) -> dict:  # noqa: B008 (FastAPI idiom)
        with Image.open(file.file) as image:
            pixels = torch.from_numpy(np.array(to_model_input(image, size))).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            probs = model(pixels).softmax(1)[0]
        top = probs.topk(top_k)
        return {"labels": [classes[i] for i in top.indices.tolist()], "probabilities": top.values.tolist()}

    return app


# --- load generation ----------------------------------------------------------------------------------


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = "benchboundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def http_request(path: str, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "keep-alive",
        **(extra or {}),
    }
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> int:
    writer.write(payload)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length is None:
        raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
    await reader.readexactly(length)
    return status


async def measure(port: int, payload: bytes, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    tickets = iter(range(requests))

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in tickets:
                start = time.perf_counter()
                status = await _one(reader, writer, payload)
                latencies.append(time.perf_counter() - start)
                errors += status != 200
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "requests": requests,
        "errors": errors,
        "throughput": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# --- orchestration ------------------------------------------------------------------------------------


def wait_http(url: str, timeout: float = 300.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default=None, help="enhancer checkpoint (default: identity enhancer)")
    parser.add_argument("--requests", type=int, default=600, help="requests per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    provenance = Provenance.start("benchmarks.gateway", argv)

    from PIL import Image

    from dyntta.data import to_model_input
    from dyntta.data.datasets import FASHION_MNIST_DEFAULT_DIR, read_idx
    from dyntta.models import load_recognizer
    from export.build import export_repository, random_images
    from serve.triton import TritonServer, free_port

    recognizer = load_recognizer(args.recognizer)
    size, classes = recognizer.config.input_size, recognizer.config.classes
    enhancer = None
    if args.enhancer:
        from dyntta.enhancer import load_enhancer

        enhancer = load_enhancer(args.enhancer)
    raw = read_idx(FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz")[0]
    png = io.BytesIO()
    Image.fromarray(raw).save(png, format="PNG")
    pixels = to_model_input(Image.open(io.BytesIO(png.getvalue())), size)[None]

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        repo = Path(tmp) / "model_repository"
        export_repository(
            recognizer,
            classes,
            size,
            repo,
            enhancer=enhancer,
            parity_images=random_images(16, size),
            log=lambda message: None,
        )
        env = {
            **os.environ,
            "BENCH_RECOGNIZER": str(Path(args.recognizer).resolve()),
            "BENCH_ENHANCER": str(Path(args.enhancer).resolve()) if args.enhancer else "",
            "PYTHONPATH": str(REPO_ROOT),
        }
        processes: list[subprocess.Popen] = []
        with TritonServer(repo, startup_timeout=300) as urls:
            try:
                gateway_port, eager_port = free_port(), free_port()
                gateway = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "serve",
                        "--triton-url",
                        urls.grpc_url,
                        "--port",
                        str(gateway_port),
                        "--state-dir",
                        str(Path(tmp) / "var"),
                        "--log-level",
                        "warning",
                    ],
                    cwd=REPO_ROOT,
                    env=env,
                )
                eager = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "benchmarks.gateway:eager_app",
                        "--factory",
                        "--port",
                        str(eager_port),
                        "--log-level",
                        "warning",
                    ],
                    cwd=REPO_ROOT,
                    env=env,
                )
                processes += [gateway, eager]
                wait_http(f"http://127.0.0.1:{gateway_port}/readyz", process=gateway)
                wait_http(f"http://127.0.0.1:{eager_port}/healthz", process=eager)
                results = run_cells(urls.http_address, gateway_port, eager_port, png.getvalue(), pixels, args)
            finally:
                for process in processes:
                    process.terminate()
                for process in processes:
                    process.wait(timeout=30)
    summary = summarise(results)
    meta = {
        "recognizer": args.recognizer,
        "arch": recognizer.config.arch,
        "enhancer": args.enhancer or "identity",
        "input_size": size,
        "requests_per_cell": args.requests,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(terse=True),
    }
    print(report_markdown(results, summary, {**provenance.header(), **meta}))
    provenance.write(args.json, {"meta": meta, "results": results, "summary": summary}, echo=False)
    return 0


def run_cells(
    triton_http: str, gateway_port: int, eager_port: int, png: bytes, pixels: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[int, list[dict[str, float]]]]:
    triton_port = int(triton_http.rsplit(":", 1)[1])
    body, content_type = multipart("files", "image.png", png, "image/png")
    eager_body, eager_type = multipart("file", "image.png", png, "image/png")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "IMAGE",
                    "shape": list(pixels.shape),
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "outputs": [{"name": "LOGITS", "parameters": {"binary_data": True}}],
        }
    ).encode()
    payloads = {
        "gateway": (gateway_port, http_request("/v1/classify?enhance=true&top_k=5", body, content_type)),
        "triton_http": (
            triton_port,
            http_request(
                "/v2/models/dyntta/infer",
                header + pixels.tobytes(),
                "application/octet-stream",
                {"Inference-Header-Content-Length": str(len(header))},
            ),
        ),
        "eager": (eager_port, http_request("/classify?top_k=5", eager_body, eager_type)),
    }
    rounds: dict[str, dict[int, list[dict[str, float]]]] = {name: {c: [] for c in CONCURRENCIES} for name in payloads}

    async def run() -> None:
        for port, payload in payloads.values():  # warm-up: connections, caches, lazy inits
            await measure(port, payload, 100, 8)
        for _ in range(args.repeats):
            for concurrency in CONCURRENCIES:
                for name, (port, payload) in payloads.items():
                    result = await measure(port, payload, args.requests, concurrency)
                    if result["errors"]:
                        raise RuntimeError(f"{name}: {result['errors']} failed requests")
                    rounds[name][concurrency].append(result)
                    print(
                        f"{name:12s} c={concurrency}: {result['throughput']:7.1f} req/s  "
                        f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms",
                        file=sys.stderr,
                    )

    asyncio.run(run())
    return rounds


def _median(values: list[float]) -> float:
    return float(np.median(values))


def summarise(rounds: dict[str, dict[int, list[dict[str, float]]]]) -> dict[str, float]:
    """Paired within rounds, then the median over rounds."""
    out = {}
    for c in CONCURRENCIES:
        pairs = zip(rounds["gateway"][c], rounds["triton_http"][c], rounds["eager"][c], strict=True)
        triples = list(pairs)
        out[f"gateway_p50_overhead_ms_c{c}"] = _median([g["p50_ms"] - t["p50_ms"] for g, t, _ in triples])
        out[f"throughput_ratio_vs_eager_c{c}"] = _median([g["throughput"] / e["throughput"] for g, _, e in triples])
        out[f"throughput_ratio_vs_triton_http_c{c}"] = _median(
            [g["throughput"] / t["throughput"] for g, t, _ in triples]
        )
    return out


def report_markdown(rounds: dict, summary: dict, meta: dict) -> str:
    lines = ["| target | concurrency | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, by_c in rounds.items():
        for c, runs in sorted(by_c.items()):
            cell = {k: _median([r[k] for r in runs]) for k in ("throughput", "p50_ms", "p99_ms")}
            lines.append(f"| {name} | {c} | {cell['throughput']:.1f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} |")
    lines += [
        "",
        "paired within rounds, median over rounds:",
        f"gateway p50 overhead over direct Triton HTTP: {summary['gateway_p50_overhead_ms_c1']:.2f} ms "
        f"(c=1), {summary['gateway_p50_overhead_ms_c8']:.2f} ms (c=8)",
        f"gateway / eager throughput: {summary['throughput_ratio_vs_eager_c8']:.2f}x (c=8), "
        f"{summary['throughput_ratio_vs_eager_c1']:.2f}x (c=1)",
        "",
        json.dumps(meta),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
