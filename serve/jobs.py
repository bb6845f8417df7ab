"""Robustness report jobs: an SQLite job table, report files, and one worker thread.

Layout under the state directory (``var/`` by default)::

    jobs.sqlite3            one row per job: parameters, state, progress, error
    reports/<id>/           report.json (dyntta.evaluate's format) and report.html

A job's data set lives in memory only (decoded at submission), so nothing is left on disk by a failed or
interrupted job. On start, jobs left ``queued`` or ``running`` by a previous process are marked
``interrupted``: their data died with that process. Finished reports are files and survive restarts.

Reports are computed by :func:`dyntta.evaluate.runner.run_report` with classifiers that call Triton through
the app's one async client (each batch is handed to the event loop from the worker thread), so the HTTP API
and ``python -m dyntta.evaluate`` produce the same report format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Imported here, in the main thread: importing this package from two threads at once (a job and a request)
# can observe a partially initialised module.
import dyntta.corruptions  # noqa: F401  (the suite run_report uses; importing it takes seconds)
from dyntta.data import LabelledImages
from dyntta.evaluate.runner import run_report
from dyntta.evaluate.writers import write_json
from serve.errors import TooManyJobs
from serve.report_html import render_report_html

log = logging.getLogger("serve.jobs")

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "interrupted")
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    source TEXT NOT NULL,
    num_images INTEGER NOT NULL,
    params TEXT NOT NULL,
    error TEXT
)
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class JobParams:
    corruptions: list[str]
    severities: list[int]
    seed: int = 0
    table: str | None = None
    with_enhancer: bool = True


@dataclass
class Job:
    id: str
    status: str
    progress: float
    message: str
    created: str
    updated: str
    source: str
    num_images: int
    params: JobParams
    error: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"],
            status=row["status"],
            progress=row["progress"],
            message=row["message"],
            created=row["created"],
            updated=row["updated"],
            source=row["source"],
            num_images=row["num_images"],
            params=JobParams(**json.loads(row["params"])),
            error=row["error"],
        )


class JobStore:
    """SQLite in autocommit mode behind a lock: the worker thread and the event loop both write."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def mark_interrupted(self) -> int:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE jobs SET status='interrupted', updated=?, "
                "message='the gateway stopped before this job finished; submit it again' "
                "WHERE status IN ('queued', 'running')",
                (_now(),),
            )
            return cursor.rowcount

    def create(self, source: str, num_images: int, params: JobParams) -> Job:
        now = _now()
        job = Job(uuid.uuid4().hex, "queued", 0.0, "waiting for the worker", now, now, source, num_images, params)
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, progress, message, created, updated, source, num_images, "
                "params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.status,
                    job.progress,
                    job.message,
                    now,
                    now,
                    source,
                    num_images,
                    json.dumps(params.__dict__),
                ),
            )
        return job

    def update(self, job_id: str, **values: Any) -> None:
        values["updated"] = _now()
        columns = ", ".join(f"{k}=?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id=?", (*values.values(), job_id))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def list(self, limit: int = 100) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def count_active(self) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JobCancelled(Exception):
    """Raised inside a running job when the gateway shuts down."""


#: (model name -> classify fn) for the report; built per job by the manager
ClassifierFactory = Callable[[bool], dict[str, Callable[[torch.Tensor], np.ndarray]]]
DataLoader = Callable[[], LabelledImages]


@dataclass
class _Pending:
    job: Job
    load: DataLoader
    future: Future[None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class JobManager:
    """Owns the store, the report directory and a single worker (reports are CPU-heavy: one at a time)."""

    def __init__(
        self,
        state_dir: Path,
        classifiers: ClassifierFactory,
        *,
        max_active: int = 4,
        batch_size: int = 256,
        header: Callable[[], dict[str, Any]] | None = None,
        on_finish: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.reports_dir = state_dir / "reports"
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(state_dir / "jobs.sqlite3")
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning("marked %d unfinished job(s) of a previous run as interrupted", interrupted)
        self._classifiers = classifiers
        self._header = header or dict
        self._on_finish = on_finish or (lambda state: None)
        self.max_active = max_active
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robustness-job")
        self._stopping = threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._submit_lock = threading.Lock()

    def report_dir(self, job_id: str) -> Path:
        return self.reports_dir / job_id

    def submit(self, source: str, num_images: int, params: JobParams, load: DataLoader) -> Job:
        with self._submit_lock:
            if self._stopping.is_set():
                raise TooManyJobs("the gateway is shutting down; not accepting jobs")
            if self.store.count_active() >= self.max_active:
                raise TooManyJobs(
                    f"{self.max_active} robustness jobs are already queued or running; retry when one finishes"
                )
            job = self.store.create(source, num_images, params)
            pending = _Pending(job, load)
            self._pending[job.id] = pending
            pending.future = self._executor.submit(self._run, pending)
        return job

    def _progress(self, job_id: str) -> Callable[[float], None]:
        last = [0.0]

        def callback(fraction: float) -> None:
            if self._stopping.is_set():
                raise JobCancelled
            now = time.monotonic()
            if now - last[0] >= 0.5 or fraction >= 1.0:  # bound SQLite writes on fast jobs
                last[0] = now
                self.store.update(job_id, progress=min(max(float(fraction), 0.0), 1.0) * 0.99)

        return callback

    def _run(self, pending: _Pending) -> None:
        job = pending.job
        state = "failed"
        try:
            if self._stopping.is_set():
                raise JobCancelled
            self.store.update(job.id, status="running", message="preparing the evaluation set")
            data = pending.load()
            pending.load = _no_data  # drop the reference to the upload's bytes early
            conditions = len(job.params.corruptions) * len(job.params.severities)
            self.store.update(
                job.id,
                num_images=len(data),
                message=f"classifying {len(data)} images, clean and {conditions} conditions",
            )
            report = self._evaluate(job, data)
            out = self.report_dir(job.id)
            out.mkdir(parents=True, exist_ok=True)
            _write_json(report, out / REPORT_JSON)
            (out / REPORT_HTML).write_text(render_report_html(report, job_id=job.id), encoding="utf-8")
            self.store.update(job.id, status="done", progress=1.0, message="report ready")
            state = "done"
        except JobCancelled:
            state = "interrupted"
            self.store.update(
                job.id, status="interrupted", message="the gateway stopped before this job finished; submit it again"
            )
        except Exception as exc:  # a job must never take the worker down; the error is the job's result
            log.exception("robustness job %s failed", job.id)
            self.store.update(job.id, status="failed", message="failed", error=_describe(exc))
        finally:
            self._pending.pop(job.id, None)
            self._on_finish(state)

    def _evaluate(self, job: Job, data: LabelledImages) -> dict[str, Any]:
        classifiers = self._classifiers(job.params.with_enhancer)
        header = {
            **self._header(),
            "job": {"id": job.id, "source": job.source, "submitted": job.created},
            "tta": "DynTTA enhancer before the recognizer (Triton ensemble) vs the recognizer alone"
            if job.params.with_enhancer
            else "none",
        }
        run = run_report(
            classifiers,
            data,
            job.params.corruptions,
            job.params.severities,
            seed=job.params.seed,
            table=job.params.table,
            progress_callback=self._progress(job.id),
            header=header,
            batch_size=self.batch_size,
        )
        return run.report

    def shutdown(self) -> None:
        """Stop taking jobs; the running one stops at its next batch; queued ones are marked interrupted."""
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.store.mark_interrupted()
        self.store.close()


def _no_data() -> LabelledImages:
    raise RuntimeError("data already consumed")


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {message}"


def _write_json(report: dict[str, Any], path: Path) -> None:
    write_json(report, path)


def triton_classifiers(
    backend: Any, loop: asyncio.AbstractEventLoop, *, ensemble: str, recognizer: str, chunk: int
) -> ClassifierFactory:
    """Classifier callables for run_report that go through Triton: uint8 NCHW -> logits (N, classes)."""

    def make(model: str) -> Callable[[torch.Tensor], np.ndarray]:
        def classify(images: torch.Tensor) -> np.ndarray:
            nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
            parts = [backend.infer_blocking(model, nhwc[i : i + chunk], loop).array for i in range(0, len(nhwc), chunk)]
            return np.concatenate(parts).astype(np.float32, copy=False)

        return classify

    def factory(with_enhancer: bool) -> dict[str, Callable[[torch.Tensor], np.ndarray]]:
        models = {"recognizer": make(recognizer)}
        if with_enhancer:
            models["enhancer + recognizer"] = make(ensemble)
        return models

    return factory
