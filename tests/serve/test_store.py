"""The job store on SQLite and on a real PostgreSQL server: claims, leases, fencing, predictions, retention.

The PostgreSQL server is Debian's (``apt-get install postgresql``), started per session in a temporary
directory with a unix socket only: ``initdb`` refuses to run as root, so as root it runs as the
``postgres`` user (``runuser``), as the project's notes describe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from serve.store import JobParams, JobStore, LeaseLost, StateDirBusy, StateDirLock, StoredPredictions
from serve.store.lock import check_state_dir_free

PG_BIN = Path(os.environ.get("DYNTTA_PG_BIN", "/usr/lib/postgresql/15/bin"))
PARAMS = JobParams(["fog"], [1], image_size=32)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields the URL of its maintenance database."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="dyntta-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb: "cannot be run as root"
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data = root / "data"

    def run(*args: str | Path) -> None:
        # cwd: a directory the server user can read (pg_ctl warns otherwise)
        subprocess.run([*as_postgres, *map(str, args)], cwd=root, check=True, capture_output=True, timeout=120)

    run(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
    options = f"-k {root} -c listen_addresses='' -c fsync=off -c max_connections=200"
    run(PG_BIN / "pg_ctl", "-D", data, "-o", options, "-w", "-t", "60", "-l", root / "server.log", "start")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={root}"
    finally:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            cwd=root,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def new_postgres_database(postgres_server: str) -> Callable[[], str]:
    """A fresh, empty database on the session's server per call (tests do not see each other's jobs)."""
    engine = create_engine(postgres_server, isolation_level="AUTOCOMMIT")

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        return postgres_server.replace("/postgres?", f"/{name}?")

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        url = request.getfixturevalue("new_postgres_database")()
    job_store = JobStore(url)
    yield job_store
    job_store.close()


def test_claims_are_exclusive_and_oldest_first(store: JobStore):
    created = [store.create("builtin", 10, PARAMS) for _ in range(3)]
    first = store.claim("a", lease_s=30)
    second = store.claim("b", lease_s=30)
    assert first is not None and second is not None
    assert [first.id, second.id] == [created[0].id, created[1].id]
    assert first.status == "running" and first.worker == "a" and first.attempts == 1
    assert store.count_active() == 3


def test_racing_workers_claim_every_job_exactly_once(store: JobStore):
    ids = {store.create("builtin", 10, PARAMS).id for _ in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := store.claim(name, lease_s=60)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_an_expired_lease_passes_the_job_on_and_fences_the_old_worker(store: JobStore):
    job = store.create("builtin", 10, PARAMS)
    stale = store.claim("slow", lease_s=30)
    assert stale is not None
    assert store.claim("other", lease_s=30) is None  # the lease holds
    # a last heartbeat, then the worker stalls: its lease runs out (a lease short enough to wait for here,
    # but never for the claim above, which a loaded CI machine once took over 0.3 s to reach)
    store.heartbeat(stale, lease_s=0.05)
    time.sleep(0.2)
    fresh = store.claim("other", lease_s=30)
    assert fresh is not None and fresh.id == job.id and fresh.attempts == 2
    for write in (
        lambda: store.heartbeat(stale, 30),
        lambda: store.progress(stale, 0.5),
        lambda: store.finish(stale),
        lambda: store.save_prediction(stale, "m:1", "fog", 1, "0-10-x", b"\0" * 40, b"\0" * 40),
    ):
        with pytest.raises(LeaseLost):
            write()
    store.finish(fresh)
    with pytest.raises(LeaseLost):  # done exactly once
        store.finish(fresh)
    done = store.get(job.id)
    assert done is not None and done.status == "done" and done.progress == 1.0


def test_predictions_survive_the_worker_and_go_when_the_job_is_done(store: JobStore):
    job = store.create("builtin", 4, PARAMS)
    first = store.claim("first", lease_s=30)
    assert first is not None
    saved = StoredPredictions(store, first)
    predicted, confidence = np.array([3, 1, 4, 1]), np.array([0.5, 0.25, 0.125, 1.0], dtype=np.float32)
    saved.put("recognizer:1", ("fog", 1), "0-4-abc", predicted, confidence)
    store.heartbeat(first, lease_s=0.05)  # then the first worker dies: its lease runs out
    time.sleep(0.2)
    second = store.claim("second", lease_s=30)
    assert second is not None and second.id == job.id
    resumed = StoredPredictions(store, second)
    hit = resumed.get("recognizer:1", ("fog", 1), "0-4-abc")
    assert hit is not None and resumed.get("recognizer:1", ("fog", 2), "0-4-abc") is None
    np.testing.assert_array_equal(hit[0], predicted)
    np.testing.assert_array_equal(hit[1], confidence)
    store.finish(second)
    assert store.load_predictions(job.id) == {}


def test_release_requeues_and_owner_filters(store: JobStore):
    mine = store.create("builtin", 10, PARAMS, owner="fp-one")
    theirs = store.create("builtin", 10, PARAMS, owner="fp-two")
    claimed = store.claim("w", lease_s=30)
    assert claimed is not None and claimed.id == mine.id
    store.release(claimed, "worker stopping")
    again = store.get(mine.id)
    assert again is not None and again.status == "queued" and again.lease_token is None
    assert store.get(mine.id, owner="fp-two") is None
    assert [j.id for j in store.list(owner="fp-one")] == [mine.id]
    assert {j.id for j in store.list()} == {mine.id, theirs.id}


def test_prune_by_count_and_age(store: JobStore):
    jobs = [store.create("builtin", 10, PARAMS) for _ in range(4)]
    for _ in jobs:
        claimed = store.claim("w", lease_s=30)
        assert claimed is not None
        store.finish(claimed)
        time.sleep(0.01)
    queued = store.create("builtin", 10, PARAMS)
    assert set(store.prune(keep=2, max_age_s=None)) == {jobs[0].id, jobs[1].id}
    assert store.prune(keep=None, max_age_s=3600) == []
    time.sleep(0.05)
    assert set(store.prune(keep=None, max_age_s=0.01)) == {jobs[2].id, jobs[3].id}
    assert [j.id for j in store.list()] == [queued.id]  # unfinished jobs are never pruned


def test_state_dir_lock(tmp_path: Path):
    with StateDirLock(tmp_path):
        with pytest.raises(StateDirBusy, match="in use by another gateway"):
            StateDirLock(tmp_path).acquire()
        with pytest.raises(StateDirBusy, match=f"pid {os.getpid()}"):
            check_state_dir_free(tmp_path)
    check_state_dir_free(tmp_path)  # released with its holder
