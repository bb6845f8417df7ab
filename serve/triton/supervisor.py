"""Keep the bundled Triton running: restart it with bounded exponential back-off when it dies.

``python -m serve`` runs the gateway over a :class:`TritonSupervisor`: after a crash (or ``kill -9``) of
``tritonserver`` the gateway answers 503 (``/readyz`` too) until the restarted server is ready on the same
ports, then serves again; no operator needed. Back-off: ``min_backoff`` doubling to ``max_backoff`` between
failed restarts, back to ``min_backoff`` once a server has stayed up ``healthy_after`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from serve.triton.errors import TritonError
from serve.triton.lifecycle import Startable
from serve.triton.server import TritonServer
from serve.triton.urls import TritonURLs

LOGGER = logging.getLogger("serve.triton.supervisor")


class TritonSupervisor(Startable):
    def __init__(
        self,
        server: TritonServer,
        *,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.server = server
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        #: restarts done so far (successful or not)
        self.restarts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # restarts run in the watcher thread, which outlives every server it starts: the kernel's
        # parent-death signal (tied to the starting thread) is then safe to use for them too
        server.parent_death_signal = True

    def start(self) -> TritonURLs:
        urls = self.server.start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()
        return urls

    def stop(self) -> None:
        self._stopping.set()
        self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=self.server.stop_timeout + 10)
            self._thread = None

    def _watch(self) -> None:
        backoff = self.min_backoff
        up_since = time.monotonic()
        while not self._stopping.is_set():
            code = self.server.wait(timeout=0.5)
            if self.server.is_alive():
                continue
            if self._stopping.is_set():
                return
            if time.monotonic() - up_since >= self.healthy_after:
                backoff = self.min_backoff
            LOGGER.error(
                "tritonserver exited (code %s); restarting in %.1f s. Log tail:\n%s",
                code,
                backoff,
                self.server.log_tail(20),
            )
            if self._stopping.wait(backoff):
                return
            self.restarts += 1
            try:
                self.server.restart()
            except TritonError as exc:
                LOGGER.error("restart %d of tritonserver failed: %s", self.restarts, exc)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            LOGGER.warning("tritonserver restarted (restart %d)", self.restarts)
            up_since = time.monotonic()
            backoff = min(backoff * 2, self.max_backoff)
