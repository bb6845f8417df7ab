"""The job store: one interface over SQLite (one host, the default) and PostgreSQL (many hosts).

Gateways create jobs and read them; workers (``python -m serve.worker``) claim them with a lease, keep the
lease alive with a heartbeat, save each batch's predictions as they go and mark the job done. Everything one
replica needs from another goes through this store or the shared report directory, never through memory.
"""

from serve.store.lock import StateDirBusy, StateDirLock
from serve.store.models import ACTIVE, FINAL, Job, JobParams
from serve.store.predictions import StoredPredictions
from serve.store.store import JobStore, LeaseLost, default_state_url

__all__ = [
    "ACTIVE",
    "FINAL",
    "Job",
    "JobParams",
    "JobStore",
    "LeaseLost",
    "StateDirBusy",
    "StateDirLock",
    "StoredPredictions",
    "default_state_url",
]
