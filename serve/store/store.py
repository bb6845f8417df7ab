"""The job store over SQLAlchemy Core: the same statements on SQLite and PostgreSQL.

Why SQLAlchemy Core rather than psycopg and sqlite3 side by side: the claim, the fenced updates and the
retention queries are written once and rendered per dialect (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
dropped on SQLite where the single UPDATE statement is atomic anyway), connection pooling and URL parsing
come with it, and there is no ORM layer to hide what each statement does. The only per-dialect code is the
connection setup and the upsert of predictions.

Leases: a worker claims the oldest claimable job (queued, or running with an expired lease) and gets a
fresh ``lease_token``; every later write of that worker (heartbeat, progress, predictions, done) is fenced
by the token, so a worker whose lease expired (it stalled, or was presumed dead) cannot overwrite the work
of the worker that took the job over, and a job is marked done exactly once. Lease times are wall-clock
seconds of the workers' hosts: their clocks must agree to well under the lease (NTP does that).
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from serve.store.models import ACTIVE, DONE, FAILED, FINAL, QUEUED, RUNNING, Job, JobParams
from serve.store.tables import jobs, metadata, predictions


class LeaseLost(Exception):
    """This worker no longer holds the job's lease (it expired and another worker claimed the job)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_state_url(state_dir: Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'jobs.sqlite3'}"


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2"):  # psycopg 3 is the driver installed
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4)
    if parsed.get_backend_name() != "sqlite":
        raise ValueError(f"unsupported state URL {url!r}: use sqlite:///path or postgresql://...")
    if parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # transactions are ours (BEGIN IMMEDIATE below), not the driver's implicit deferred ones, which
        # can fail with "database is locked" instead of waiting when a read turns into a write
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; several processes
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        status=row.status,
        progress=row.progress,
        message=row.message,
        created=row.created,
        updated=row.updated,
        source=row.source,
        num_images=row.num_images,
        params=JobParams.from_json(row.params),
        error=row.error,
        owner=row.owner or "",
        worker=row.worker,
        lease_token=row.lease_token,
        lease_until=row.lease_until,
        attempts=row.attempts or 0,
    )


class JobStore:
    """Jobs and their saved predictions, in the database named by ``url`` (``sqlite:///...`` or
    ``postgresql://...``). Safe to share between threads and processes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.dialect = self.engine.dialect.name
        self._create_schema()

    # --- schema -----------------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":  # several processes may start at once on an empty database
                conn.execute(text("SELECT pg_advisory_xact_lock(7203114)"))
            metadata.create_all(conn)
            # a state directory of an older gateway: add the columns it lacks (all have defaults)
            present = {c["name"] for c in inspect(conn).get_columns("jobs")}
            for column in jobs.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=conn.dialect)
                    default = column.server_default.arg if column.server_default is not None else None  # type: ignore[attr-defined]
                    suffix = f" DEFAULT '{default}'" if default is not None else ""
                    conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column.name} {kind}{suffix}"))

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- gateway side -----------------------------------------------------------------------------------

    def create(
        self, source: str, num_images: int, params: JobParams, *, owner: str = "", job_id: str | None = None
    ) -> Job:
        now, iso = time.time(), _now_iso()
        job = Job(job_id or uuid.uuid4().hex, QUEUED, 0.0, "waiting for a worker", iso, iso, source, num_images, params)
        job.owner = owner
        with self._tx() as conn:
            conn.execute(
                jobs.insert().values(
                    id=job.id,
                    status=job.status,
                    progress=0.0,
                    message=job.message,
                    created=iso,
                    updated=iso,
                    source=source,
                    num_images=num_images,
                    params=params.to_json(),
                    owner=owner,
                    created_at=now,
                    attempts=0,
                )
            )
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None; with ``owner``, None also when another key created it."""
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._tx() as conn:
            row = conn.execute(query).first()
        return _job(row) if row else None

    def list(self, limit: int = 100, owner: str | None = None) -> list[Job]:
        query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._tx() as conn:
            return [_job(r) for r in conn.execute(query)]

    def count_active(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).where(jobs.c.status.in_(ACTIVE))).scalar_one())

    def count_by_status(self) -> dict[str, int]:
        """Number of jobs in each status present (one GROUP BY; read on every metrics scrape)."""
        with self._tx() as conn:
            rows = conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status))
            return {str(status): int(n) for status, n in rows}

    # --- worker side ------------------------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Job | None:
        """Take the oldest job that is queued or whose lease expired, for ``lease_s`` seconds."""
        now = time.time()
        claimable = or_(jobs.c.status == QUEUED, and_(jobs.c.status == RUNNING, jobs.c.lease_until < now))
        # PostgreSQL: the row is locked and workers racing for it skip to the next one; SQLite: the clause
        # is not rendered and the whole UPDATE runs under the database's write lock
        oldest = (
            select(jobs.c.id)
            .where(claimable)
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        token = uuid.uuid4().hex
        with self._tx() as conn:
            claimed = conn.execute(
                update(jobs)
                .where(jobs.c.id == oldest, claimable)
                .values(
                    status=RUNNING,
                    worker=worker,
                    lease_token=token,
                    lease_until=now + lease_s,
                    attempts=jobs.c.attempts + 1,
                    updated=_now_iso(),
                    message="claimed by a worker",
                )
            ).rowcount
            if not claimed:
                return None
            row = conn.execute(select(jobs).where(jobs.c.lease_token == token)).first()
        return _job(row) if row else None

    def _fenced(self, job: Job, **values: Any) -> None:
        with self._tx() as conn:
            _fenced_update(conn, job, values)

    def heartbeat(self, job: Job, lease_s: float) -> None:
        self._fenced(job, lease_until=time.time() + lease_s)

    def progress(self, job: Job, fraction: float, message: str | None = None) -> None:
        values: dict[str, Any] = {"progress": min(max(float(fraction), 0.0), 1.0)}
        if message is not None:
            values["message"] = message
        self._fenced(job, **values)

    def set_num_images(self, job: Job, num_images: int, message: str) -> None:
        self._fenced(job, num_images=num_images, message=message)

    def finish(
        self,
        job: Job,
        status: Literal["done", "failed"] = DONE,
        *,
        message: str = "report ready",
        error: str | None = None,
    ) -> None:
        """Mark the job done (or failed) and drop its saved predictions; raises LeaseLost if another worker
        owns it now, so a job is completed exactly once."""
        values: dict[str, Any] = {
            "status": status,
            "message": message,
            "error": error,
            "finished_at": time.time(),
            "lease_until": None,
            "updated": _now_iso(),
        }
        if status == DONE:
            values["progress"] = 1.0
        with self._tx() as conn:
            _fenced_update(conn, job, values)
            conn.execute(delete(predictions).where(predictions.c.job_id == job.id))

    def release(self, job: Job, message: str) -> None:
        """Give a job back to the queue (this worker is stopping): the next worker resumes it."""
        with suppress(LeaseLost):
            self._fenced(job, status=QUEUED, lease_token=None, lease_until=None, worker=None, message=message)

    # --- predictions ------------------------------------------------------------------------------------

    def load_predictions(self, job_id: str) -> dict[tuple[str, str, int, str], tuple[bytes, bytes]]:
        with self._tx() as conn:
            rows = conn.execute(select(predictions).where(predictions.c.job_id == job_id))
            return {(r.model_key, r.corruption, r.severity, r.batch): (r.predicted, r.confidence) for r in rows}

    def save_prediction(
        self, job: Job, model_key: str, corruption: str, severity: int, batch: str, predicted: bytes, confidence: bytes
    ) -> None:
        """Insert one batch's predictions; fenced by the lease in the same transaction."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = (
            insert(predictions)
            .values(
                job_id=job.id,
                model_key=model_key,
                corruption=corruption,
                severity=severity,
                batch=batch,
                predicted=predicted,
                confidence=confidence,
            )
            .on_conflict_do_nothing()  # the same batch from a stalled worker: same bytes, keep the first
        )
        with self._tx() as conn:
            owner = conn.execute(
                select(jobs.c.id).where(
                    jobs.c.id == job.id, jobs.c.lease_token == job.lease_token, jobs.c.status == RUNNING
                )
            ).first()
            if owner is None:
                raise LeaseLost(f"job {job.id}: the lease of this worker ended; another worker owns the job")
            conn.execute(statement)

    # --- retention --------------------------------------------------------------------------------------

    def prune(self, keep: int | None, max_age_s: float | None) -> builtins.list[str]:  # ``list``: the method
        """Delete finished jobs beyond the newest ``keep`` or finished more than ``max_age_s`` ago; returns
        their ids (the caller removes their report files)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.finished_at, jobs.c.created_at)
                .where(jobs.c.status.in_((*FINAL, "interrupted")))
                .order_by(func.coalesce(jobs.c.finished_at, jobs.c.created_at).desc(), jobs.c.id.desc())
            ).all()
            cutoff = time.time() - max_age_s if max_age_s else None
            victims = [
                r.id
                for i, r in enumerate(rows)
                if (keep is not None and i >= keep) or (cutoff is not None and (r.finished_at or r.created_at) < cutoff)
            ]
            for chunk in _chunks(victims, 500):
                conn.execute(delete(predictions).where(predictions.c.job_id.in_(chunk)))
                conn.execute(delete(jobs).where(jobs.c.id.in_(chunk)))
        return victims

    def close(self) -> None:
        self.engine.dispose()


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _fenced_update(conn: Connection, job: Job, values: dict[str, Any]) -> None:
    """Update ``job``'s row only while this worker's lease token still owns it (fencing); else LeaseLost."""
    values.setdefault("updated", _now_iso())
    changed = conn.execute(
        update(jobs)
        .where(jobs.c.id == job.id, jobs.c.lease_token == job.lease_token, jobs.c.status == RUNNING)
        .values(**values)
    ).rowcount
    if not changed:
        raise LeaseLost(f"job {job.id}: the lease of this worker ended; another worker owns the job")


__all__ = ["FAILED", "JobStore", "LeaseLost", "default_state_url"]
