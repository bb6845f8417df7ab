"""Robustness report jobs, gateway side: submit to the job store, read jobs and reports, start the embedded
worker. The jobs themselves run in worker processes (:mod:`serve.worker`), never in the gateway.

Layout::

    <state dir>/                 local to one gateway, locked by it (serve.store.lock)
        gateway.lock
        jobs.sqlite3             the job store when --state-url is not given (SQLite, WAL)
    <reports dir>/<job id>/      shared by every gateway and worker (default <state dir>/reports)
        input.npz                an uploaded set, decoded and validated at submission (removed when done)
        report.json, report.html the finished report

An upload is decoded here, at submission, so a bad archive is a 400 to the client that sent it; the worker
gets exactly the pixels that were validated, from any host that mounts the reports directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serve.config import Settings
from serve.errors import ShuttingDown, TooManyJobs
from serve.store import ACTIVE, FINAL, Job, JobParams, JobStore, StateDirLock, default_state_url

log = logging.getLogger("serve.jobs")

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
INPUT_NPZ = "input.npz"

__all__ = [
    "ACTIVE",
    "FINAL",
    "INPUT_NPZ",
    "REPORT_HTML",
    "REPORT_JSON",
    "Job",
    "JobManager",
    "JobParams",
    "JobStateCollector",
    "JobStore",
]


def resolve_paths(settings: Settings) -> tuple[str, Path]:
    """(store URL, reports directory) of these settings."""
    state_url = settings.state_url or default_state_url(settings.state_dir)
    reports_dir = Path(settings.reports_dir) if settings.reports_dir else settings.state_dir / "reports"
    return state_url, reports_dir.resolve()


def input_path(reports_dir: Path, job_id: str) -> Path:
    return reports_dir / job_id / INPUT_NPZ


def remove_job_files(reports_dir: Path, job_id: str, *, keep_report: bool) -> None:
    if keep_report:
        input_path(reports_dir, job_id).unlink(missing_ok=True)
    else:
        shutil.rmtree(reports_dir / job_id, ignore_errors=True)


class EmbeddedWorkers:
    """``python -m serve``'s own worker(s), as child processes of the gateway, restarted if they die.

    Processes rather than threads in the gateway: the gateway stays free of torch and of the corruption
    code's CPU time under the GIL (a report would otherwise add latency to every classify request), a
    crashing job cannot take the gateway down, and the single-host default runs the very code path of a
    multi-host deployment (claims, leases, resuming). The children die with the gateway (PDEATHSIG)."""

    def __init__(self, count: int, args: list[str], env: dict[str, str] | None = None) -> None:
        self._command = [sys.executable, "-m", "serve.worker", *args]
        self._env = env
        self._stopping = threading.Event()
        self.restarts = 0
        self.processes = [self._spawn() for _ in range(count)]
        self._monitor: threading.Thread | None = None
        if self.processes:
            log.info("started %d embedded worker(s): pids %s", count, [p.pid for p in self.processes])
            self._monitor = threading.Thread(target=self._supervise, name="embedded-workers", daemon=True)
            self._monitor.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._command,
            env=self._env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads started yet in the child)
        )

    def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping.wait(delay):
            for i, process in enumerate(self.processes):
                if process.poll() is not None and not self._stopping.is_set():
                    # its job, if any, goes to the next worker when the lease expires
                    log.error("embedded worker pid %d exited with %s; restarting it", process.pid, process.returncode)
                    self.processes[i] = self._spawn()
                    self.restarts += 1
                    delay = min(delay * 2, 30.0)  # a worker that cannot start must not spin
                    break
            else:
                delay = 1.0

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # the running job goes back to the queue
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class JobStateCollector(Collector):
    """``dyntta_gateway_robustness_jobs{state}``: jobs in each state, read from the store at scrape time.

    Jobs finish in worker processes, possibly on other hosts, so no gateway-side counter could see them;
    the store is the one place that knows, and a GROUP BY per scrape is cheap. Every gateway sharing the
    store reports the same figures (aggregate them with max, not sum)."""

    STATES = (*ACTIVE, *FINAL)

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.store.count_by_status()
        except Exception:  # noqa: BLE001 (a scrape must not fail because the database is briefly away)
            log.warning("could not read job counts from the store", exc_info=True)
            return
        family = GaugeMetricFamily(
            "dyntta_gateway_robustness_jobs", "robustness jobs in the store by state", labels=["state"]
        )
        for state in self.STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # without it, registering would call collect() (a database query) just to learn the names
        yield GaugeMetricFamily(
            "dyntta_gateway_robustness_jobs", "robustness jobs in the store by state", labels=["state"]
        )


class JobManager:
    """The gateway's side of jobs: the state directory lock, the store, the reports directory and the
    embedded workers (``settings.workers``; 0 when workers run elsewhere)."""

    def __init__(self, settings: Settings, triton: str | Sequence[str] | None = None) -> None:
        self.settings = settings
        self.lock = StateDirLock(settings.state_dir).acquire()  # before anything is read or written
        try:
            self.state_url, self.reports_dir = resolve_paths(settings)
            self.reports_dir.mkdir(parents=True, exist_ok=True)
            self.store = JobStore(self.state_url)
            urls = [triton] if isinstance(triton, str) else list(triton or ())
            self.workers = EmbeddedWorkers(settings.workers if urls else 0, self._worker_args(urls), self._worker_env())
        except BaseException:
            self.lock.release()
            raise
        self.max_active = settings.max_queued_jobs
        self._stopping = False

    def _worker_args(self, triton: list[str]) -> list[str]:
        s = self.settings
        args = [
            f"--triton-url={','.join(triton)}",
            f"--reports-dir={self.reports_dir}",
            f"--job-lease-s={s.job_lease_s}",
            f"--job-batch-size={s.job_batch_size}",
            f"--keep-reports={s.keep_reports}",
            f"--report-max-age-days={s.report_max_age_days}",
            f"--ensemble-model={s.ensemble_model}",
            f"--recognizer-model={s.recognizer_model}",
            f"--log-level={logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()}",
        ]
        return [a for a in args if not a.endswith("=None")]

    def _worker_env(self) -> dict[str, str]:
        # the store URL goes by environment, not argv: a PostgreSQL password must not show in ps
        return {**os.environ, "DYNTTA_STATE_URL": self.state_url}

    def report_dir(self, job_id: str) -> Path:
        return self.reports_dir / job_id

    def check_capacity(self) -> None:
        """Refuse (429) before any work on the upload when the queue is full or the gateway is stopping."""
        if self._stopping:
            raise ShuttingDown("the gateway is shutting down; not accepting jobs")
        if self.store.count_active() >= self.max_active:
            raise TooManyJobs(
                f"{self.max_active} robustness jobs are already queued or running; retry when one finishes"
            )

    def submit(
        self,
        source: str,
        num_images: int,
        params: JobParams,
        *,
        owner: str = "",
        images: npt.NDArray[np.uint8] | None = None,
        labels: npt.NDArray[np.int64] | None = None,
    ) -> Job:
        """Queue a job; ``images`` (N, S, S, 3) uint8 + ``labels`` for an uploaded set (else the built-in set)."""
        self.check_capacity()
        job_id = uuid.uuid4().hex
        if images is not None and labels is not None:
            # the input is in place before the row exists: a worker never claims a job without its data
            path = input_path(self.reports_dir, job_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{INPUT_NPZ}.tmp")
            with open(partial, "wb") as fh:
                np.savez(fh, images=images, labels=labels.astype(np.int64))
            os.replace(partial, path)
        return self.store.create(source, num_images, params, owner=owner, job_id=job_id)

    def get(self, job_id: str, owner: str) -> Job | None:
        return self.store.get(job_id, owner=owner)

    def list(self, limit: int, owner: str) -> list[Job]:
        return self.store.list(limit, owner=owner)

    def shutdown(self) -> None:
        """Stop taking jobs and stop the embedded workers (their running job goes back to the queue)."""
        self._stopping = True
        try:
            self.workers.stop()
            self.store.close()
        finally:
            self.lock.release()
