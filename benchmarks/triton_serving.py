"""Throughput and latency through Triton (gRPC) against onnxruntime in-process on the same ONNX files.

    uv run python benchmarks/triton_serving.py [--model-repository model_repository] [--url host:8001]
        [--batch-sizes 1 16 64] [--concurrency 1 8] [--seconds 5] [--json results.json]

For every model (``dyntta`` ensemble, ``recognizer`` alone), batch size and concurrency it measures
images/s and p50/p99 request latency in-process (the ceiling: onnxruntime sessions with default options on
the repository's ``*/1/model.onnx``, the ensemble as enhancer then recognizer) and through Triton with the
asyncio gRPC client (``concurrency`` requests in flight). Triton is the bundled server started by
``serve.triton`` unless ``--url`` names a running one. Both sides run on the same machine; the client is
part of the measured system, as in production.

Each run also records the CPU seconds it consumed (this process, plus for Triton every process of the
server's process group: tritonserver and its python-backend stubs), giving images per CPU-second. On a
machine shared with other jobs wall-clock throughput partly measures how much CPU each side wins from
them (more runnable threads win more); images per CPU-second does not depend on that.

The two sides of a cell are measured back to back, ``--repeats`` times alternately, and the best run of
each is kept: on a shared machine the background load drifts, and alternating keeps it from favouring the
side that happened to run in a quiet minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.provenance import Provenance  # noqa: E402
from serve.triton import TritonServer, TritonURLs, connect  # noqa: E402

IMAGE, LOGITS, ENHANCED = "IMAGE", "LOGITS", "ENHANCED_IMAGE"


@dataclass
class Cell:
    target: str  # "in-process" | "triton-grpc"
    variant: str  # in-process: "ort-defaults" | "served-options"; triton: "grpc-aio"
    model: str
    batch: int
    concurrency: int
    requests: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_seconds: float
    images_per_cpu_s: float


def summarise(
    target: str,
    variant: str,
    model: str,
    batch: int,
    concurrency: int,
    latencies: list[float],
    seconds: float,
    cpu_seconds: float,
) -> Cell:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    images = len(latencies) * batch
    return Cell(
        target,
        variant,
        model,
        batch,
        concurrency,
        len(latencies),
        round(seconds, 2),
        round(images / seconds, 1),
        round(statistics.median(ordered) * 1e3, 2),
        round(p99 * 1e3, 2),
        round(cpu_seconds, 2),
        round(images / max(cpu_seconds, 1e-9), 1),
    )


def group_cpu_seconds(pgid: int | None) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid`` (Linux /proc)."""
    if pgid is None:
        return 0.0
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after "pid (comm)": state ppid pgrp ... utime(12th) stime(13th)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_now(pgid: int | None) -> float:
    return time.process_time() + group_cpu_seconds(pgid)


def session(path: Path, served: bool) -> ort.InferenceSession:
    """onnxruntime's defaults, or the options the python-backend host uses (threads from the config, no
    spinning): the ceiling is the better of the two, which depends on what else the machine runs."""
    options = ort.SessionOptions()
    if served:
        from export.repository import parse_config

        params = parse_config(path.parents[1] / "config.pbtxt").parameters
        if "intra_op_thread_count" in params:
            options.intra_op_num_threads = int(params["intra_op_thread_count"].string_value)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process_runner(repository: Path, model: str, served: bool) -> Callable[[np.ndarray], np.ndarray]:
    recognizer = session(repository / "recognizer" / "1" / "model.onnx", served)
    if model == "recognizer":
        return lambda images: recognizer.run([LOGITS], {IMAGE: images})[0]
    enhancer = session(repository / "enhancer" / "1" / "model.onnx", served)
    return lambda images: recognizer.run([LOGITS], {IMAGE: enhancer.run([ENHANCED], {IMAGE: images})[0]})[0]


def bench_in_process(
    run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    for _ in range(3):
        run(images)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            run(images)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


async def bench_triton(
    grpc_address: str, model: str, images: np.ndarray, concurrency: int, seconds: float
) -> tuple[list[float], float]:
    import tritonclient.grpc.aio as aio
    from tritonclient.grpc import InferInput, InferRequestedOutput

    client = aio.InferenceServerClient(grpc_address)
    tensor = InferInput(IMAGE, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    outputs = [InferRequestedOutput(LOGITS)]
    try:
        for _ in range(3):
            await client.infer(model, [tensor], outputs=outputs)
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                result = await client.infer(model, [tensor], outputs=outputs)
                result.as_numpy(LOGITS)
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started
    finally:
        await client.close()


def markdown(cells: Sequence[Cell]) -> str:
    base = {(c.model, c.batch, c.concurrency): c for c in cells if c.target == "in-process"}
    lines = [
        "| model | batch | concurrency | in-process img/s (best variant) | Triton gRPC img/s | ratio | "
        "in-process p50 / p99 ms | Triton p50 / p99 ms | img per CPU-s in-process / Triton (ratio) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        ref = base.get((cell.model, cell.batch, cell.concurrency))
        if cell.target != "triton-grpc" or ref is None:
            continue
        ratio = cell.images_per_s / ref.images_per_s
        lines.append(
            f"| {cell.model} | {cell.batch} | {cell.concurrency} | "
            f"{ref.images_per_s} ({ref.variant}) | {cell.images_per_s} | {ratio:.0%} | "
            f"{ref.p50_ms} / {ref.p99_ms} | {cell.p50_ms} / {cell.p99_ms} | "
            f"{ref.images_per_cpu_s} / {cell.images_per_cpu_s} "
            f"({cell.images_per_cpu_s / ref.images_per_cpu_s:.0%}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model-repository", default="model_repository", help="repository for the bundled server")
    parser.add_argument(
        "--url",
        help="a running Triton serving the same repository: host:port or grpc://host:port (gRPC), "
        "http://host:port (gRPC on port + 1), the rule of serve.triton.urls; None: start the bundled one",
    )
    parser.add_argument("--grpc-url", help="its gRPC host:port when not on the standard layout; None: derived")
    parser.add_argument("--models", nargs="+", default=["dyntta", "recognizer"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side; best is kept")
    parser.add_argument("--json", help="also write the cells here")
    args = parser.parse_args(argv)
    repository = Path(args.model_repository)
    size = int(json.loads((repository / "recognizer" / "export.json").read_text())["onnx"]["inputs"][0]["shape"][1])
    rng = np.random.default_rng(0)
    cells: list[Cell] = []
    provenance = Provenance.start("benchmarks.triton_serving", argv)

    server = None
    if args.url:
        urls: TritonURLs = connect(args.url, grpc_url=args.grpc_url, models=args.models)
    else:
        server = TritonServer(repository)
        urls = server.start()
    try:
        for model in args.models:
            runners = {
                "ort-defaults": in_process_runner(repository, model, served=False),
                "served-options": in_process_runner(repository, model, served=True),
            }
            for batch in args.batch_sizes:
                images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
                for concurrency in args.concurrency:
                    best: dict[str, Cell] = {}
                    for _ in range(args.repeats):
                        for target, variant in (
                            ("in-process", "ort-defaults"),
                            ("triton-grpc", "grpc-aio"),
                            ("in-process", "served-options"),
                        ):
                            pgid = server.pid if server is not None and target == "triton-grpc" else None
                            cpu_start = cpu_now(pgid)
                            if target == "in-process":
                                measured = bench_in_process(runners[variant], images, concurrency, args.seconds)
                            else:
                                measured = asyncio.run(
                                    bench_triton(urls.grpc_address, model, images, concurrency, args.seconds)
                                )
                            cpu = cpu_now(pgid) - cpu_start
                            cell = summarise(target, variant, model, batch, concurrency, *measured, cpu)
                            if target not in best or cell.images_per_s > best[target].images_per_s:
                                best[target] = cell
                    for cell in best.values():
                        cells.append(cell)
                        print(cell, file=sys.stderr)
    finally:
        if server is not None:
            server.stop()

    table = markdown(cells)
    print(table)
    host = {"cpus": os.cpu_count(), "machine": platform.machine(), "onnxruntime": ort.__version__}
    triton = args.url or "bundled (serve.triton)"
    body = {"host": host, "triton": triton, "cells": [asdict(c) for c in cells], "table": table}
    provenance.write(args.json, body, echo=False)  # the table is printed above


if __name__ == "__main__":
    main()
