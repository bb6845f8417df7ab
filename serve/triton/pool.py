"""The gateway's Triton replicas: one async gRPC client each, health-probed, least-outstanding-first.

``--triton-url`` may be given several times, and a host name counts once per IP address it resolves to
(re-resolved every ``resolve_interval`` s, so replicas behind a headless Service come and go). Each
replica is *up* when Triton is live and serves every model the gateway needs, *down* after a failed call
or probe, and *unknown* before its first probe. Up replicas are probed every ``probe_interval`` s; down
ones with exponential back-off from ``min_backoff`` to ``max_backoff`` (so a restarted replica takes
traffic again within about ``max_backoff`` s plus a probe).

:meth:`ReplicaPool.pick` returns the up replica with the fewest requests in flight (ties: the one used
least recently). When none is up it returns a not-yet-probed or down one anyway: the call then fails fast
(gRPC keeps the connection in back-off) and the caller answers 503, as with a single server. Retrying
on another replica is the caller's decision (``serve.inference``: inference is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field

import tritonclient.grpc.aio as grpcclient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from tritonclient.utils import InferenceServerException

from serve.triton.urls import Resolver, grpc_addresses, resolve_host, split_urls

log = logging.getLogger("serve.triton.pool")

_MAX_MESSAGE = 2**31 - 1
#: gRPC's default reconnect backoff grows to 2 minutes; a restarted Triton should be used within a second.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 2**31 - 1),
]


class ReplicaState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


_order = itertools.count()


@dataclass(eq=False)
class Replica:
    """One Triton endpoint (gRPC ``host:port``) and what the pool knows about it."""

    address: str
    source: str  # the --triton-url it came from
    client: grpcclient.InferenceServerClient
    state: ReplicaState = ReplicaState.UNKNOWN
    outstanding: int = 0
    requests: int = 0
    errors: int = 0
    retried: int = 0  # calls that failed here and were retried on another replica
    last_error: str = ""
    backoff: float = 0.0
    next_probe: float = 0.0
    last_used: int = field(default_factory=lambda: next(_order))


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica, for readiness answers and logs."""

    address: str
    state: str
    outstanding: int
    requests: int
    errors: int
    retried: int
    last_error: str


class ReplicaPool:
    """Create inside the event loop that will use it (gRPC aio binds to it); ``await start()``, then
    ``await close()``."""

    def __init__(
        self,
        urls: str | Sequence[str],
        models: Sequence[str],
        *,
        probe_interval: float = 2.0,
        min_backoff: float = 0.25,
        max_backoff: float = 4.0,
        probe_timeout: float = 2.0,
        resolve_interval: float = 30.0,
        resolver: Resolver = resolve_host,
    ) -> None:
        self.sources = split_urls(urls)
        if not self.sources:
            raise ValueError("no Triton URL given")
        self.models = list(models)
        self.probe_interval = probe_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.probe_timeout = probe_timeout
        self.resolve_interval = resolve_interval
        self._resolver = resolver
        self.replicas: list[Replica] = []
        self._next_resolve = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._resolve()

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Probe every replica once, then keep probing in the background."""
        await self.probe_all()
        if self._task is None:
            self._task = asyncio.create_task(self._probe_loop(), name="triton-replica-probes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for replica in self.replicas:
            await replica.client.close()

    # --- routing ------------------------------------------------------------------------------------

    def pick(self, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The replica for the next call (see the module docstring); None if every replica is excluded."""
        excluded = set(map(id, exclude))
        candidates = [r for r in self.replicas if id(r) not in excluded]
        if not candidates:
            return None
        up = [r for r in candidates if r.state is ReplicaState.UP]
        if not up:  # nothing known to work: try the least recently failed (fails fast, or recovers)
            order = {ReplicaState.UNKNOWN: 0, ReplicaState.DOWN: 1, ReplicaState.UP: 2}
            return min(candidates, key=lambda r: (order[r.state], r.next_probe, r.outstanding))
        return min(up, key=lambda r: (r.outstanding, r.last_used))

    def has_other(self, replica: Replica) -> bool:
        return any(r is not replica for r in self.replicas)

    @contextlib.asynccontextmanager
    async def lease(self, replica: Replica) -> AsyncIterator[grpcclient.InferenceServerClient]:
        """Count one call in flight on ``replica`` for routing and metrics."""
        replica.outstanding += 1
        replica.requests += 1
        replica.last_used = next(_order)
        try:
            yield replica.client
        finally:
            replica.outstanding -= 1

    def mark_down(self, replica: Replica, reason: str) -> None:
        """A call failed because of the replica: route around it until a probe finds it serving again."""
        replica.errors += 1
        replica.last_error = reason
        if replica.state is not ReplicaState.DOWN:
            log.warning("Triton replica %s is down: %s", replica.address, reason)
            replica.state = ReplicaState.DOWN
            replica.backoff = self.min_backoff
            replica.next_probe = time.monotonic() + replica.backoff

    def record_error(self, replica: Replica, reason: str) -> None:
        """A call failed for a reason that is not the replica's health (deadline, bad input)."""
        replica.errors += 1
        replica.last_error = reason

    # --- health ---------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(r.state is ReplicaState.UP for r in self.replicas)

    def status(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(r.address, r.state.value, r.outstanding, r.requests, r.errors, r.retried, r.last_error)
            for r in self.replicas
        ]

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(r) for r in self.replicas))

    async def probe(self, replica: Replica) -> bool:
        """Live and every model ready -> up; anything else -> down (with back-off)."""
        timeout = self.probe_timeout
        try:
            live = bool(await replica.client.is_server_live(client_timeout=timeout))
            ready = live and all(
                await asyncio.gather(*(replica.client.is_model_ready(m, client_timeout=timeout) for m in self.models))
            )
            reason = "" if ready else ("not live" if not live else "models not ready")
        except InferenceServerException as exc:
            ready, reason = False, f"{exc.status() or ''} {exc.message() or exc}".strip()
        now = time.monotonic()
        if ready:
            if replica.state is not ReplicaState.UP:
                log.info("Triton replica %s is up", replica.address)
            replica.state, replica.backoff = ReplicaState.UP, 0.0
            replica.next_probe = now + self.probe_interval
            return True
        if replica.state is not ReplicaState.DOWN:
            log.warning("Triton replica %s is down: %s", replica.address, reason)
            replica.backoff = self.min_backoff
        else:
            replica.backoff = min(max(replica.backoff, self.min_backoff) * 2, self.max_backoff)
        replica.state, replica.last_error = ReplicaState.DOWN, reason
        replica.next_probe = now + replica.backoff
        return False

    async def _probe_loop(self) -> None:
        tick = min(self.min_backoff, self.probe_interval, 0.25)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now >= self._next_resolve:
                self._resolve(await asyncio.to_thread(self._wanted))
            due = [r for r in self.replicas if r.next_probe <= now]
            if due:
                await asyncio.gather(*(self.probe(r) for r in due), return_exceptions=True)

    def _wanted(self) -> dict[str, str]:
        """Address -> the URL it came from, resolving host names now (blocking: DNS)."""
        wanted: dict[str, str] = {}
        for source in self.sources:
            for address in grpc_addresses(source, self._resolver):
                wanted.setdefault(address, source)
        return wanted

    def _resolve(self, wanted: dict[str, str] | None = None) -> None:
        """Add replicas for new addresses, drop idle ones whose address is gone."""
        self._next_resolve = time.monotonic() + self.resolve_interval
        wanted = self._wanted() if wanted is None else wanted
        known = {r.address for r in self.replicas}
        kept = [r for r in self.replicas if r.address in wanted or r.outstanding > 0]
        for address, source in wanted.items():
            if address not in known:
                client = grpcclient.InferenceServerClient(address, channel_args=CHANNEL_ARGS)
                kept.append(Replica(address, source, client))
                if self.replicas:
                    log.info("Triton replica %s added (%s)", address, source)
        for gone in [r for r in self.replicas if r not in kept]:
            log.info("Triton replica %s removed (%s no longer resolves to it)", gone.address, gone.source)
            self._closing.add(asyncio.get_running_loop().create_task(gone.client.close()))
        self.replicas = kept


class PoolCollector:
    """Per-replica Prometheus series, read from the pool at scrape time."""

    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool

    def describe(self) -> list[Metric]:
        return []  # dynamic label values: no up-front description

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "dyntta_gateway_triton_replica_requests", "Triton calls sent to each replica", labels=["replica"]
        )
        errors = CounterMetricFamily(
            "dyntta_gateway_triton_replica_errors", "Triton calls that failed, per replica", labels=["replica"]
        )
        retried = CounterMetricFamily(
            "dyntta_gateway_triton_replica_retried",
            "Triton calls that failed on the replica and were retried on another",
            labels=["replica"],
        )
        outstanding = GaugeMetricFamily(
            "dyntta_gateway_triton_replica_outstanding", "Triton calls in flight per replica", labels=["replica"]
        )
        state = GaugeMetricFamily(
            "dyntta_gateway_triton_replica_state",
            "1 for the replica's current state (up: live and serving every model)",
            labels=["replica", "state"],
        )
        for r in self.pool.replicas:
            requests.add_metric([r.address], r.requests)
            errors.add_metric([r.address], r.errors)
            retried.add_metric([r.address], r.retried)
            outstanding.add_metric([r.address], r.outstanding)
            for s in ReplicaState:
                state.add_metric([r.address, s.value], 1.0 if r.state is s else 0.0)
        return [requests, errors, retried, outstanding, state]
