"""The "try a corruption" panel's back end: corrupt one decoded image, enhance it, classify both.

- :class:`CorruptionWorker`: the corruption suite (``dyntta.corruptions``) needs torch, which the gateway
  process never imports. Corruptions therefore run in one separate process, started on first use (it
  imports torch once, seconds), one image at a time, each under a CPU-time limit (:mod:`serve.cpu_limit`,
  as upload decoding) and a wall-clock one (a worker stuck in C is killed and restarted on the next
  request), with a bounded queue in front (503 + Retry-After beyond it). The pixels it gets are already
  the model's input (decoded and converted by the gateway's normal upload path), and it corrupts them
  exactly as robustness reports do (``dyntta.evaluate.predictions.corrupt_uint8``).
- :func:`enhance`: the served enhancer's image and, when the model has them, its ``OP_WEIGHTS`` (one
  Triton call asking for both outputs, through the backend's replica retry and error translation) named
  by its ``op_names`` config parameter. An enhancer exported before op weights existed still works: the
  answer says why there are none.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from dyntta.contract import CORRUPTION_GROUPS, CORRUPTIONS, OP_WEIGHTS, SEVERITIES, resolve_conditions
from serve.cpu_limit import CPU, OK, Outcome, serve_tasks
from serve.errors import ApiError, BackendError
from serve.inference import TritonBackend

log = logging.getLogger("serve.playground")
Pixels = npt.NDArray[np.uint8]
"""One image in the model's input contract: uint8 (S, S, 3)."""
#: what the worker gets per image: (pixels, corruption, severity, seed)
Task = tuple[Pixels, str, int, int]

#: what the form's corruption field may say for "the upload is already corrupted: take it as it is"
AS_UPLOADED = ("", "none", "as_uploaded")


class InvalidChoice(ApiError):
    """An unknown corruption or severity: 422 like any other invalid field, naming the valid choices."""

    status_code, code = 422, "validation_error"


class CorruptionUnavailable(ApiError):
    """The corruption worker is busy, failed to start or ran over its budget (not the client's fault)."""

    status_code, code = 503, "corruption_unavailable"

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


def parse_choice(corruption: str | None, severity: str | int | None) -> tuple[str, int] | None:
    """The (corruption, severity) to apply, or None for an upload that is already corrupted.

    Names and severities are checked by :func:`dyntta.contract.resolve_conditions` (its message names the
    valid choices and the closest name); a group ("noise") is refused: the panel shows one corruption."""
    if corruption is None or corruption.strip().lower() in AS_UPLOADED:
        return None
    try:
        names, levels = resolve_conditions([corruption], [severity if severity not in (None, "") else 3])
    except ValueError as exc:
        raise InvalidChoice(str(exc)) from None
    if len(names) != 1:
        raise InvalidChoice(
            f"{corruption!r} is a group of {len(names)} corruptions; choose one of {', '.join(CORRUPTIONS)}"
        )
    return names[0], levels[0]


def options() -> tuple[dict[str, list[str]], list[int]]:
    """Corruption names by group and the severities, for the page's selects."""
    return {group: list(names) for group, names in CORRUPTION_GROUPS.items()}, list(SEVERITIES)


# --- the corruption process -----------------------------------------------------------------------------


def _corrupt(pixels: Pixels, name: str, severity: int, seed: int) -> Pixels:
    """In the worker: uint8 (S, S, 3) -> the same image corrupted and quantised, as reports make it."""
    import torch

    from dyntta.evaluate.predictions import corrupt_uint8

    batch = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].contiguous()
    out = corrupt_uint8(
        batch, (name, severity), torch.zeros(1, dtype=torch.int64), seed=seed, table=None, device=torch.device("cpu")
    )
    result: Pixels = out[0].permute(1, 2, 0).contiguous().numpy()
    return result


def _on_error(exc: Exception) -> tuple[str, Any]:
    if isinstance(exc, ValueError):  # the suite's own checks (e.g. an input smaller than it supports)
        return "invalid", str(exc)
    return "error", f"{exc.__class__.__name__}: {exc}"


def _serve(conn: Connection) -> None:
    """Worker process: import torch and the suite once, then corrupt one image per ``(cpu_s, task)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # while importing, too
    try:
        import torch

        torch.set_num_threads(1)  # one image: threads would only compete with the gateway for the cores
        import dyntta.evaluate.predictions  # noqa: F401  (the import is the slow part: do it before "ready")
    except Exception as exc:
        conn.send(("error", f"cannot load the corruption suite ({exc.__class__.__name__}: {exc})"))
        return
    conn.send(("ready", None))
    serve_tasks(conn, lambda task: _corrupt(*task), _on_error)


class CorruptionWorker:
    """One lazily started corruption process; :meth:`run` corrupts one image there.

    ``cpu_s``: CPU seconds per image; ``max_waiting``: requests that may queue behind the one running
    (more get 503); ``start_timeout_s``: for the first start (importing torch on a loaded machine)."""

    def __init__(self, cpu_s: float = 2.0, max_waiting: int = 4, start_timeout_s: float = 120.0) -> None:
        self.cpu_s = cpu_s
        self.max_waiting = max_waiting
        self.start_timeout_s = start_timeout_s
        self.pending = 0  # running + queued, counted until the worker thread is done with each
        self._context = multiprocessing.get_context("forkserver")  # the decode pool's server: no re-import
        self._process: Any = None
        self._conn: Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="corruption")  # one at a time, in order

    @property
    def started(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return self._process.pid if self.started else None

    async def warm(self) -> None:
        """Start the process now (in the background of the caller) unless it runs or is being started."""
        if not self.started and self.pending == 0:
            await self._submit(None)

    async def run(self, pixels: Pixels, name: str, severity: int, seed: int) -> Pixels:
        status, value = await self._submit((pixels, name, severity, seed))
        if status == OK:
            return np.asarray(value, dtype=np.uint8)
        if status == "invalid":
            raise InvalidChoice(f"{name} cannot be applied to this image: {value}")
        if status == CPU:
            raise CorruptionUnavailable(f"{name} needed more than {self.cpu_s:g} s of CPU for one image")
        raise CorruptionUnavailable(f"the corruption worker failed: {value}")

    async def _submit(self, args: Task | None) -> tuple[str, Any]:
        if self.pending > self.max_waiting:
            raise CorruptionUnavailable(
                f"the corruption worker is busy ({self.pending} requests queued); retry shortly"
            )
        loop = asyncio.get_running_loop()
        self.pending += 1
        future: Future[tuple[str, Any]] = self._thread.submit(self._blocking, args)
        # counted until the thread is done, even if the request was cancelled meanwhile: the bound holds
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.pending -= 1

    def _blocking(self, args: Task | None) -> tuple[str, Any]:
        """In the worker thread: (re)start the process if needed, then one task; never raises."""
        if not self.started:
            self._kill()  # reap a worker that died since the last request
            try:
                self._start()
            except Exception as exc:
                self._kill()
                reason = "it exited while starting" if isinstance(exc, EOFError) else str(exc) or repr(exc)
                return "error", f"it could not start ({reason})"
        if args is None:
            return OK, None
        assert self._conn is not None
        try:
            self._conn.send((self.cpu_s, args))
            wall_s = max(5.0 * self.cpu_s, 5.0)  # past this the worker is stuck in C code: kill it
            if self._conn.poll(wall_s):
                outcome: Outcome = self._conn.recv()
                return outcome.status, outcome.value
            log.warning("corruption worker %s overran %g s; killing it", self._process.pid, wall_s)
            status, value = CPU, None
        except (EOFError, OSError) as exc:
            log.warning("corruption worker died (%s); it restarts on the next request", exc)
            status, value = "error", f"the worker process died ({exc.__class__.__name__})"
        self._kill()
        return status, value

    def _start(self) -> None:
        start = time.perf_counter()
        self._conn, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child,), daemon=True, name="dyntta-corrupt")
        self._process.start()
        child.close()
        if not self._conn.poll(self.start_timeout_s):
            raise RuntimeError(f"the corruption worker did not start within {self.start_timeout_s:g} s")
        status, value = self._conn.recv()
        if status != "ready":
            raise RuntimeError(str(value))
        log.info("corruption worker %s ready in %.1f s", self._process.pid, time.perf_counter() - start)

    def _kill(self) -> None:
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        if process is not None and process.pid is not None:  # pid is None if start() itself failed
            if process.is_alive():
                process.kill()
            process.join(timeout=5)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Stop the process (blocking: up to a few seconds); queued tasks are dropped."""
        self._thread.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()  # the worker's recv() ends: it exits on its own
        if self._process is not None and self._process.pid is not None:
            self._process.join(timeout=2)
        self._kill()


# --- the enhancer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enhanced:
    image: Pixels
    weights: npt.NDArray[np.float32] | None  # (K,)
    op_names: tuple[str, ...]
    version: str
    seconds: float
    note: str | None  # why there are no op weights, when there are none


async def enhance(backend: TritonBackend, name: str, pixels: Pixels, request_id: str = "") -> Enhanced:
    """One image through the enhancer: its image and, when the model serves them, its ``OP_WEIGHTS`` (named by
    its ``op_names`` parameter) in one call. An enhancer exported before op weights existed still works, and
    so does the image when only the op-weights call fails (502): the note says why there are no weights."""
    info = await backend.model_info(name)
    if OP_WEIGHTS not in info.outputs:
        note = (
            f"the served enhancer ({name} v{info.version}) has no {OP_WEIGHTS} output: it was exported before op "
            "weights were served; re-export the model repository to see which operations it uses"
        )
    else:
        try:
            result = await backend.infer_outputs(name, pixels[None], [info.output_name, OP_WEIGHTS], request_id)
        except BackendError as exc:  # not a timeout or an unreachable server: those fail the request
            note = f"op weights unavailable for this request ({exc.message})"
            log.warning("enhancer call with %s failed, retrying without: %s", OP_WEIGHTS, exc.message)
        else:
            weights = result.arrays[OP_WEIGHTS].reshape(-1).astype(np.float32)
            op_names = info.op_names or ()
            if len(op_names) != len(weights):  # no or stale op_names: still show the weights, by position
                op_names = tuple(f"op{i}" for i in range(len(weights)))
            image = result.arrays[info.output_name].reshape(pixels.shape)
            return Enhanced(image, weights, op_names, result.version, result.seconds, None)
    plain = await backend.infer(name, pixels[None], request_id=request_id)
    return Enhanced(plain.array.reshape(pixels.shape), None, (), plain.version, plain.seconds, note)


class Playground:
    """Per-app state of the panel: the corruption worker."""

    def __init__(self, worker: CorruptionWorker | None = None) -> None:
        self.worker = worker or CorruptionWorker()
        self._warming: asyncio.Task[None] | None = None

    def warm(self) -> None:
        """Start the corruption worker in the background (the page asks for the options when it loads)."""
        if self._warming is None or self._warming.done():
            self._warming = asyncio.get_running_loop().create_task(self.worker.warm())

    async def close(self) -> None:
        await asyncio.to_thread(self.worker.close)
