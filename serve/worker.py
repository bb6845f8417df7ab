"""``python -m serve.worker``: runs robustness report jobs from the job store; no HTTP.

Any number of workers, on any host, share one store (``--state-url``; SQLite on one host, PostgreSQL for
several) and one report directory (``--reports-dir``, a shared volume), and reach the models through Triton
(``--triton-url``). Each worker loops: claim the oldest claimable job with a lease, keep the lease alive
with a heartbeat thread, run the report, write the report files, mark the job done. Every batch's
predictions go to the store as they are made, so when a worker dies mid-job its lease expires and the next
worker to claim the job classifies only the batches not yet saved: the report is the same as an
uninterrupted run's (the corruptions are keyed per image, so re-made batches are the same pixels).

SIGTERM or Ctrl-C: the running job stops at its next batch and goes back to the queue, to be resumed.

Examples::

    python -m serve.worker --triton-url grpc://triton:8001 --state-url postgresql://user@db/dyntta \\
        --reports-dir /shared/reports
    DYNTTA_TRITON_URL=grpc://127.0.0.1:8001 python -m serve.worker --state-dir var
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from serve.config import Settings, add_arguments, settings_from_args
from serve.errors import BackendTimeout, BackendUnavailable
from serve.jobs import REPORT_HTML, REPORT_JSON, input_path, remove_job_files, resolve_paths
from serve.store import Job, JobStore, LeaseLost, StoredPredictions
from serve.store.models import DONE, FAILED

if TYPE_CHECKING:  # the worker imports the ML stack only when it runs a job
    from dyntta.evaluate.classifiers import ClassifyFn

log = logging.getLogger("serve.worker")


class Stopping(Exception):
    """The worker is stopping: the job goes back to the queue."""


class _Loop:
    """An event loop in a thread, for the async Triton client (the worker itself is synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="triton-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float | None = None) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class WorkerConfig:
    triton_urls: tuple[str, ...]
    state_url: str
    reports_dir: Path
    lease_s: float = 30.0
    poll_s: float = 1.0
    chunk: int = 64
    batch_size: int = 256
    ensemble: str = "dyntta"
    recognizer: str = "recognizer"
    enhancer: str = "enhancer"
    keep_reports: int | None = None
    report_max_age_s: float | None = None
    worker_id: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        state_url, reports_dir = resolve_paths(settings)
        from serve.triton import split_urls

        return cls(
            triton_urls=tuple(split_urls(settings.triton_url)),
            state_url=state_url,
            reports_dir=reports_dir,
            lease_s=settings.job_lease_s,
            chunk=settings.job_batch_size,
            ensemble=settings.ensemble_model,
            recognizer=settings.recognizer_model,
            enhancer=settings.enhancer_model,
            keep_reports=settings.keep_reports or None,
            report_max_age_s=settings.report_max_age_days * 86400 if settings.report_max_age_days else None,
        )


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        from serve.inference import TritonBackend  # grpc.aio binds to the loop it is created on

        self.config = config
        self.id = config.worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store = JobStore(config.state_url)
        self.stop = threading.Event()
        self._loop = _Loop()
        self.backend = self._loop.run(self._make_backend(TritonBackend))
        config.reports_dir.mkdir(parents=True, exist_ok=True)

    async def _make_backend(self, factory: Any) -> Any:
        backend = factory(list(self.config.triton_urls), models=[self.config.ensemble, self.config.recognizer])
        await backend.start()
        return backend

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Run jobs until stopped (or, with ``once``, until the queue is empty); returns jobs finished."""
        log.info(
            "worker %s: store %s, reports in %s", self.id, _safe_url(self.config.state_url), self.config.reports_dir
        )
        self.prune()
        finished = 0
        while not self.stop.is_set():
            job = self.store.claim(self.id, self.config.lease_s)
            if job is None:
                if once:
                    break
                self.stop.wait(self.config.poll_s)
                continue
            if self.run_job(job):
                finished += 1
                self.prune()
        return finished

    def run_job(self, job: Job) -> bool:
        """Run one claimed job; True if this worker completed it."""
        log.info("job %s: claimed (attempt %d)", job.id, job.attempts)
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, lost), name=f"lease-{job.id[:8]}", daemon=True)
        beat.start()
        try:
            run = self._evaluate(job, self._checker(job, lost))
            if lost.is_set():
                raise LeaseLost(f"job {job.id}: lease lost")
            self._write_report(job, run)
            self.store.finish(job, DONE)
            remove_job_files(self.config.reports_dir, job.id, keep_report=True)
            log.info("job %s: done by worker %s", job.id, self.id)
            return True
        except Stopping:
            self.store.release(job, "a worker stopped while running this job; it resumes on the next worker")
            log.info("job %s: released (worker stopping)", job.id)
        except LeaseLost as exc:
            log.warning("%s; leaving it to that worker", exc)
        except (BackendUnavailable, BackendTimeout) as exc:  # Triton restarting or overloaded: not the job's fault
            self.store.release(job, f"waiting for Triton ({exc.message}); the job resumes when it answers")
            log.warning("job %s: released, Triton unavailable (%s)", job.id, exc.message)
            self.stop.wait(self.config.poll_s * 5)
        except Exception as exc:  # a job must never take the worker down; the error is the job's result
            log.exception("job %s failed", job.id)
            try:
                self.store.finish(job, FAILED, message="failed", error=_describe(exc))
                remove_job_files(self.config.reports_dir, job.id, keep_report=False)
            except LeaseLost:
                pass
        finally:
            lost.set()  # also stops the heartbeat
            beat.join(timeout=5)
        return False

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.config.lease_s / 3):
            try:
                self.store.heartbeat(job, self.config.lease_s)
            except LeaseLost:
                log.warning("job %s: lease lost", job.id)
                done.set()
            except Exception:  # a database hiccup: try again at the next beat, the lease has slack
                log.exception("job %s: heartbeat failed", job.id)

    def _checker(self, job: Job, lost: threading.Event) -> Callable[[float], None]:
        last = [0.0]

        def progress(fraction: float) -> None:
            if lost.is_set():
                raise LeaseLost(f"job {job.id}: lease lost")
            if self.stop.is_set():
                raise Stopping
            now = time.monotonic()
            if now - last[0] >= 0.5 or fraction >= 1.0:  # bound the store's writes on fast jobs
                last[0] = now
                self.store.progress(job, fraction * 0.99)

        return progress

    # --- one job ----------------------------------------------------------------------------------------

    def _evaluate(self, job: Job, progress: Callable[[float], None]) -> Any:
        """The job's report run (``.report``, and the enhancer strip's pixels for its figures)."""
        from dyntta.evaluate.runner import ReportOptions, run_report
        from dyntta.evaluate.strip import StripSpec
        from dyntta.version import __version__

        data = self._load(job)
        conditions = len(job.params.corruptions) * len(job.params.severities)
        self.store.set_num_images(job, len(data), f"classifying {len(data)} images, clean and {conditions} conditions")
        models = {"recognizer": self.config.recognizer}
        if job.params.with_enhancer:
            models["enhancer + recognizer"] = self.config.ensemble
        infos = {name: self._loop.run(self.backend.model_info(model)) for name, model in models.items()}
        saved = StoredPredictions(self.store, job)
        header = {
            "served_by": {
                "server": f"dyntta {__version__}",
                "triton": self.backend.url,
                "ensemble": self.config.ensemble,
                "recognizer": self.config.recognizer,
            },
            "job": {"id": job.id, "source": job.source, "submitted": job.created},
            "tta": "DynTTA enhancer before the recognizer (Triton ensemble) vs the recognizer alone"
            if job.params.with_enhancer
            else "none",
        }
        options = ReportOptions(
            corruptions=job.params.corruptions,
            severities=job.params.severities,
            seed=job.params.seed,
            table=job.params.table,
            batch_size=self.config.batch_size,
            model_keys={name: f"{info.name}:{info.version}" for name, info in infos.items()},
        )
        classifiers: dict[str, ClassifyFn] = {name: self._classifier(model) for name, model in models.items()}
        strip = None
        if job.params.with_enhancer:
            enhancer = self._loop.run(self.backend.model_info(self.config.enhancer))
            strip = StripSpec(
                enhance=self._enhancer(enhancer),
                enhanced_by=f"Triton model `{enhancer.name}` version {enhancer.version}, output {enhancer.output_name}",
            )
        run = run_report(classifiers, data, options, header=header, progress=progress, cache=saved, strip=strip)
        if saved.reused:
            log.info("job %s: reused %d saved batch predictions", job.id, saved.reused)
        return run

    def _classifier(self, model: str) -> ClassifyFn:
        chunk = self.config.chunk

        def classify(images: Any) -> npt.NDArray[np.float32]:  # uint8 NCHW tensor -> logits
            nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
            parts = [
                self._loop.run(self.backend.infer(model, nhwc[i : i + chunk])).array for i in range(0, len(nhwc), chunk)
            ]
            logits: npt.NDArray[np.float32] = np.concatenate(parts).astype(np.float32, copy=False)
            return logits

        return classify

    def _enhancer(self, info: Any) -> Callable[[Any], Any]:
        """The served enhancer's ENHANCED_IMAGE as the strip's enhance function (uint8 NCHW in and out)."""
        import torch

        from dyntta.contract import ENHANCED_IMAGE

        if info.output_name != ENHANCED_IMAGE:  # Triton answers with a model's first output
            raise ValueError(f"model {info.name!r}: first output {info.output_name!r}, expected {ENHANCED_IMAGE!r}")

        def enhance(images: Any) -> Any:
            nhwc = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
            out = self._loop.run(self.backend.infer(info.name, nhwc)).array
            return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).contiguous()

        return enhance

    def _load(self, job: Job) -> Any:
        import torch

        from dyntta.data import LabelledImages
        from serve.evalset import BUILTIN_NAME, load_builtin

        if not job.params.classes and job.source == BUILTIN_NAME:
            return load_builtin(job.params.image_size, job.num_images)
        with np.load(input_path(self.config.reports_dir, job.id)) as saved:
            images, labels = saved["images"], saved["labels"]
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return LabelledImages(
            f"upload:{job.source}", "test", tensor, torch.from_numpy(labels.astype(np.int64)), list(job.params.classes)
        )

    def _write_report(self, job: Job, run: Any) -> None:
        """The enhancer strip's PNGs, report.json and report.html (the PNGs embedded) in the job's folder,
        each written whole then renamed into place."""
        from dyntta.evaluate.outputs import write_enhancer_figures
        from dyntta.evaluate.writers import write_json
        from serve.report_html import render_report_html

        self.store.heartbeat(job, self.config.lease_s)  # still ours: do not write over a new owner's files
        out = self.config.reports_dir / job.id
        out.mkdir(parents=True, exist_ok=True)
        mine = self.id.replace(":", "_")
        drafts = out / f".figures.{mine}.tmp"
        drafts.mkdir(exist_ok=True)
        for path in write_enhancer_figures(run, drafts).values():  # also names the files in the report
            path.replace(out / path.name)
        shutil.rmtree(drafts, ignore_errors=True)
        report = run.report
        tmp = out / f".{REPORT_JSON}.{mine}.tmp"
        write_json(report, tmp)
        tmp.replace(out / REPORT_JSON)
        tmp = out / f".{REPORT_HTML}.{mine}.tmp"
        tmp.write_text(render_report_html(report, job_id=job.id, assets=out), encoding="utf-8")
        tmp.replace(out / REPORT_HTML)

    def prune(self) -> None:
        if self.config.keep_reports is None and self.config.report_max_age_s is None:
            return
        removed = self.store.prune(self.config.keep_reports, self.config.report_max_age_s)
        for job_id in removed:
            shutil.rmtree(self.config.reports_dir / job_id, ignore_errors=True)
        if removed:
            log.info("retention: removed %d old report(s)", len(removed))

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the Triton channels and the store; a channel that does not close in ``timeout_s`` is left
        to the process's exit (a stopping worker must exit well inside Kubernetes' 30 s grace period)."""
        try:
            self._loop.run(self.backend.close(), timeout_s)
        except TimeoutError:
            log.warning("worker %s: Triton channels not closed after %.0f s; exiting anyway", self.id, timeout_s)
        finally:
            self._loop.close()
            self.store.close()


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {message}"


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    from dyntta.cli import ArgumentParser

    parser = ArgumentParser(prog="python -m serve.worker", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--once", action="store_true", help="exit when no job is waiting (benchmarks, cron)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity"
    )
    return parser


def _work(args: argparse.Namespace) -> int:
    from dyntta.cli import CommandError, UsageError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_from_args(args)
    if not settings.triton_url:
        raise UsageError("a worker needs Triton: pass --triton-url (or set DYNTTA_TRITON_URL)")
    from sqlalchemy.exc import SQLAlchemyError

    try:
        worker = Worker(WorkerConfig.from_settings(settings))
    except SQLAlchemyError as exc:
        raise CommandError(f"cannot open the job store: {exc.__class__.__name__}: {exc}") from None

    def stop(signum: int, _frame: Any) -> None:
        log.info("worker %s: signal %d, stopping after the current batch", worker.id, signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run(once=args.once)
    finally:
        log.info("worker %s: closing", worker.id)
        worker.close()
        log.info("worker %s: stopped", worker.id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from dyntta.cli import run

    return run(build_parser(), _work, argv)


if __name__ == "__main__":
    raise SystemExit(main())
