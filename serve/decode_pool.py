"""Worker processes that decode uploads under a CPU-time limit.

Pillow parses JPEG markers and PNG chunks in Python, one loop iteration per fill byte or chunk, so a 5 MB
JPEG of padding costs ~2 s of CPU before a pixel is decoded; no header check can see that coming. Anything
but tiny uploads is therefore decoded here: in a separate process (the event loop and the other requests
keep their core), under a CPU-time limit (:mod:`serve.cpu_limit`) that interrupts the Python loops; a
worker that overruns even that (stuck in C) is killed after a wall-clock grace and replaced. Either way
the client gets a 413 naming the limit.

Workers are forked from a forkserver that has imported the decoding code (numpy and Pillow, no torch)
once, so a replacement costs milliseconds, not the time of importing them again.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from serve.cpu_limit import CPU, OK, Outcome, serve_tasks
from serve.errors import ApiError, BadImage, PayloadTooLarge

log = logging.getLogger("serve.decode")
T = TypeVar("T")

#: imported once by the forkserver, so that forked workers start with the decoding code loaded
_PRELOAD = ["serve.imaging"]
#: a worker stuck in C code past its CPU limit is killed after this many times the limit (wall clock)
_WALL_GRACE = 5.0


def _call_task(task: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = task
    return fn(*args)


def _on_error(exc: Exception) -> tuple[str, Any]:
    if isinstance(exc, ApiError):  # the decoder's own verdict (bad image, too large): re-raised by the pool
        return "api", (type(exc), exc.message)
    return "error", f"{exc.__class__.__name__}: {exc}"


def _worker(conn: Connection) -> None:
    serve_tasks(conn, _call_task, _on_error)


class _Worker:
    def __init__(self, context: Any, cpu_s: float) -> None:
        self.cpu_s = cpu_s
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), daemon=True, name="dyntta-decode")
        self.process.start()
        child.close()

    def send(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.conn.send((self.cpu_s, (fn, args)))

    def stop(self) -> None:
        self.conn.close()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def _pong() -> str:
    return "pong"


def _ping(worker: _Worker) -> None:
    worker.send(_pong, ())
    if not worker.conn.poll(60) or worker.conn.recv()[:2] != (OK, "pong"):
        raise RuntimeError("a decoding process did not start")


class DecodePool:
    """``workers`` decoding processes; :meth:`run` sends ``fn(*args)`` (picklable, module-level) to an idle
    one and returns its result, re-raising :class:`serve.errors.ApiError` s raised there.

    Any module-level function works, so the zip reader can use the same pool for a whole archive.
    ``on_task(cpu_s)`` is called with each task's user CPU time in its worker (the gateway's decode metric).
    """

    def __init__(self, workers: int = 2, cpu_s: float = 1.0, on_task: Callable[[float], None] | None = None) -> None:
        self.size = max(1, workers)
        self.cpu_s = cpu_s
        self.on_task = on_task
        self._context = multiprocessing.get_context("forkserver")
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] | None = None
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="decode-pool")
        self._lock = threading.Lock()
        #: tasks waiting for a worker (a gauge reads it)
        self.waiting = 0

    def start(self) -> None:
        """Start the workers (blocking: the first start of the forkserver imports the decoding code)."""
        self._context.set_forkserver_preload(_PRELOAD)
        self._workers = [_Worker(self._context, self.cpu_s) for _ in range(self.size)]

    async def open(self) -> None:
        await asyncio.to_thread(self.start)
        # one round trip each: a forked worker still runs multiprocessing's start-up (it re-imports the main
        # module), which the first real request must not wait for
        await asyncio.gather(*(asyncio.to_thread(_ping, w) for w in self._workers))
        self._idle = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)

    async def close(self) -> None:
        workers, self._workers = self._workers, []

        def stop_all() -> None:
            for worker in workers:
                worker.stop()

        await asyncio.to_thread(stop_all)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._idle is None:
            raise RuntimeError("DecodePool.open() was not awaited")
        self.waiting += 1
        try:
            worker = await self._idle.get()
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()
        future = self._threads.submit(self._call, worker, fn, args)
        idle = self._idle

        def release(done: Any) -> None:
            # the worker goes back only when its task is over, even if the request was cancelled meanwhile
            replacement = done.result()[1] if not done.cancelled() and done.exception() is None else worker
            loop.call_soon_threadsafe(idle.put_nowait, replacement)

        future.add_done_callback(release)
        (status, value, cpu_s), _ = await asyncio.wrap_future(future)
        if self.on_task is not None:
            self.on_task(cpu_s)
        if status == OK:
            result: T = value
            return result
        if status == "api":
            kind, message = value
            raise kind(message)
        if status == CPU:
            raise PayloadTooLarge(
                f"decoding needed more than {self.cpu_s:g} s of CPU; the image is too expensive to decode "
                "(send a smaller or plainer file)"
            )
        raise BadImage(f"the image could not be decoded ({value})")

    def _call(self, worker: _Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Outcome, _Worker]:
        """In a pool thread: one task on ``worker``; a dead or stuck worker is replaced (returned second)."""
        try:
            worker.send(fn, args)
            if worker.conn.poll(max(_WALL_GRACE * self.cpu_s, 5.0)):
                outcome: Outcome = worker.conn.recv()
                return outcome, worker
            log.warning("decode worker %s overran its CPU limit in C code; killing it", worker.process.pid)
            outcome = Outcome(CPU, None, self.cpu_s)  # at least its limit: the worker's own count dies with it
        except (EOFError, OSError) as exc:
            log.warning("decode worker %s died (%s); replacing it", worker.process.pid, exc)
            outcome = Outcome("error", f"the decoder crashed: {exc.__class__.__name__}")
        worker.kill()
        with self._lock:
            replacement = _Worker(self._context, self.cpu_s)
            self._workers = [replacement if w is worker else w for w in self._workers]
        return outcome, replacement
