"""Robustness-job throughput with 1 and 2 workers (``python -m serve.worker``) on one Triton.

    uv run python benchmarks/jobs.py [--model-repository model_repository] [--url host:8001]
        [--workers 1 2] [--jobs 6] [--num-images 256] [--corruptions fog,contrast,gaussian_noise,pixelate]
        [--severities 1,3,5] [--json results.json]

For each worker count: a fresh SQLite store gets ``--jobs`` identical built-in-set jobs (the gateway's
submission path is not measured: the jobs go straight into the store), the workers are started with
``--once`` (they exit when the queue is empty) and the wall time from their start until the last job is done
is measured. Reported: jobs/min and images classified/s (images x (1 + conditions) x models per job).
Worker start-up (importing torch, a few seconds) is inside the wall time, as it is in a deployment that
scales workers up for a burst of jobs. Triton is the
bundled server started by ``serve.triton`` unless ``--url`` names a running one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.provenance import Provenance  # noqa: E402
from dyntta.contract import resolve_conditions  # noqa: E402
from serve.store import JobParams, JobStore  # noqa: E402
from serve.triton import TritonServer  # noqa: E402


@dataclass
class Result:
    workers: int
    jobs: int
    images_per_job: int
    conditions: int
    seconds: float
    jobs_per_min: float
    images_per_s: float


def run(
    grpc: str, workers: int, jobs: int, num_images: int, corruptions: list[str], severities: list[int], size: int
) -> Result:
    with tempfile.TemporaryDirectory(prefix="dyntta-jobs-bench-") as tmp:
        url = f"sqlite:///{tmp}/jobs.sqlite3"
        store = JobStore(url)
        params = JobParams(corruptions, severities, seed=0, with_enhancer=True, image_size=size)
        ids = [store.create("builtin", num_images, params).id for _ in range(jobs)]
        args = [
            sys.executable,
            "-m",
            "serve.worker",
            "--once",
            f"--triton-url={grpc}",
            f"--state-url={url}",
            f"--reports-dir={tmp}/reports",
            f"--state-dir={tmp}",
            "--log-level=warning",
        ]
        started = time.perf_counter()
        processes = [subprocess.Popen(args) for _ in range(workers)]
        for process in processes:
            if process.wait() != 0:
                raise SystemExit(f"a worker exited with {process.returncode}")
        seconds = time.perf_counter() - started
        states = [store.get(i) for i in ids]
        store.close()
    if not all(s is not None and s.status == "done" for s in states):
        raise SystemExit(f"not every job finished: {[s.status if s else None for s in states]}")
    conditions = len(corruptions) * len(severities)
    classified = jobs * num_images * (1 + conditions) * 2  # recognizer alone + enhancer + recognizer
    return Result(
        workers,
        jobs,
        num_images,
        conditions,
        round(seconds, 2),
        round(jobs / seconds * 60, 2),
        round(classified / seconds, 1),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--url", default=None, help="a running Triton's gRPC host:port (default: start the bundled one)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--corruptions", default="fog,contrast,gaussian_noise,pixelate")
    parser.add_argument("--severities", default="1,3,5")
    parser.add_argument("--image-size", type=int, default=32, help="the served recognizer's input size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    provenance = Provenance.start("benchmarks.jobs")
    corruptions, severities = resolve_conditions(args.corruptions.split(","), args.severities.split(","))

    def measure(grpc: str) -> list[Result]:
        results = []
        for count in args.workers:
            result = run(grpc, count, args.jobs, args.num_images, list(corruptions), list(severities), args.image_size)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
        return results

    if args.url:
        results = measure(args.url)
    else:
        with TritonServer(args.model_repository, startup_timeout=300) as urls:
            results = measure(urls.grpc_address)
    written = provenance.write(args.json, {"results": [asdict(r) for r in results]}, echo=False)
    print(f"load average: {written['load_average_at_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
