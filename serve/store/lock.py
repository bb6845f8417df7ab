"""An exclusive lock on a gateway's local state directory.

Who holds it: ``python -m serve`` (the gateway with its embedded worker) for as long as it runs. A second
gateway started on the same directory refuses to start, before touching anything (no job is changed by a
start: unfinished jobs are resumed through their leases, not marked by whoever starts next). Standalone
workers (``python -m serve.worker``) take no lock: they share jobs through the store's leases, any number
of them.

With several gateways on PostgreSQL, each gateway has its own local state directory (its lock, and the
SQLite file it would use by default) and they all share the report directory (``--reports-dir``, a volume).
That shared directory is deliberately not locked: advisory locks are unreliable on network file systems,
and it needs none, because every file in it is named by job id and written once, atomically (temporary
file + rename), by the one worker holding the job's lease.

``flock`` is released by the kernel when the process dies, so a crashed gateway never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


class StateDirBusy(RuntimeError):
    """Another running gateway owns this state directory."""


class StateDirLock:
    FILENAME = "gateway.lock"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.FILENAME
        self._file: IO[str] | None = None

    def acquire(self) -> StateDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while locked)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise StateDirBusy(
                f"the state directory {self.path.parent} is in use by another gateway ({holder}); stop it, or "
                "give this one its own --state-dir (gateways share jobs through --state-url and --reports-dir)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat(timespec='seconds')}"
        )
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_state_dir_free(state_dir: Path) -> None:
    """Raise StateDirBusy now if another gateway holds ``state_dir`` (a fast check before starting Triton)."""
    StateDirLock(state_dir).acquire().release()
