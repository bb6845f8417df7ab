"""The "try a corruption" panel's back end: corrupt one decoded image, enhance it, classify both.

- :class:`CorruptionWorker`: the corruption suite (``dyntta.corruptions``) needs torch, which the gateway
  process never imports. Corruptions therefore run in one separate process, started on first use (it
  imports torch once, seconds), one image at a time, each under a CPU-time limit (``ITIMER_PROF``, as in
  :mod:`serve.decode_pool`) and a wall-clock one (a worker stuck in C is killed and restarted on the next
  request), with a bounded queue in front (503 + Retry-After beyond it). The pixels it gets are already
  the model's input (decoded and converted by the gateway's normal upload path), and it corrupts them
  exactly as robustness reports do (``dyntta.evaluate.predictions.corrupt_uint8``).
- :func:`enhance`: the served enhancer's ``ENHANCED_IMAGE`` and, when the model has them, its
  ``OP_WEIGHTS`` (one Triton call asking for both outputs) named by its ``op_names`` config parameter.
  An enhancer exported before op weights existed still works: the answer says why there are none.
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
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from dyntta.contract import (
    CORRUPTION_GROUPS,
    CORRUPTIONS,
    ENHANCED_IMAGE,
    IMAGE_DATATYPE,
    OP_NAMES_PARAMETER,
    OP_WEIGHTS,
    SEVERITIES,
    resolve_conditions,
)
from serve.errors import ApiError, BackendTimeout
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


class _CpuLimit(Exception):
    pass


_armed = False  # only while a corruption runs: a late signal must not hit the worker's own loop


def _on_cpu_limit(signum: int, frame: object) -> None:
    if _armed:
        raise _CpuLimit


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


def _serve(conn: Connection) -> None:
    """Worker process: import torch and the suite once, then corrupt one image per ``(cpu_s, task)``."""
    global _armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the gateway stops us
    try:
        import torch

        torch.set_num_threads(1)  # one image: threads would only compete with the gateway for the cores
        import dyntta.evaluate.predictions  # noqa: F401  (the import is the slow part: do it before "ready")
    except Exception as exc:
        conn.send(("error", f"cannot load the corruption suite ({exc.__class__.__name__}: {exc})"))
        return
    conn.send(("ready", None))
    signal.signal(signal.SIGPROF, _on_cpu_limit)
    while True:
        try:
            cpu_s, task = conn.recv()
        except (EOFError, OSError):
            return
        _armed = True
        signal.setitimer(signal.ITIMER_PROF, cpu_s)  # this process's CPU time, user + system
        try:
            out = _corrupt(*task)
            _armed = False
            result: tuple[str, Any] = ("ok", out)
        except _CpuLimit:
            result = ("cpu", None)
        except ValueError as exc:  # the suite's own checks (e.g. an input smaller than it supports)
            result = ("invalid", str(exc))
        except Exception as exc:
            result = ("error", f"{exc.__class__.__name__}: {exc}")
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            conn.send(result)
        except (OSError, ValueError):
            return


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
        if status == "ok":
            return np.asarray(value, dtype=np.uint8)
        if status == "invalid":
            raise InvalidChoice(f"{name} cannot be applied to this image: {value}")
        if status == "cpu":
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
            return "ok", None
        assert self._conn is not None
        try:
            self._conn.send((self.cpu_s, args))
            wall_s = max(5.0 * self.cpu_s, 5.0)  # past this the worker is stuck in C code: kill it
            if self._conn.poll(wall_s):
                status, value = self._conn.recv()
                return status, value
            log.warning("corruption worker %s overran %g s; killing it", self._process.pid, wall_s)
            status, value = "cpu", None
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


# --- the enhancer's outputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnhancerOutputs:
    """What the served enhancer returns besides its image: the op-weights output and its op names."""

    version: str
    image_output: str
    weights_output: str | None
    op_names: tuple[str, ...]
    note: str | None  # why there are no op weights, when there are none


@dataclass(frozen=True)
class Enhanced:
    image: Pixels
    weights: npt.NDArray[np.float32] | None  # (K,)
    op_names: tuple[str, ...]
    version: str
    seconds: float
    note: str | None


async def _on_a_replica(backend: TritonBackend, call: Any) -> Any:
    """``call(client)`` on the replica the pool picks (no retry: callers fall back to ``backend.infer``)."""
    replica = backend.pool.pick()
    if replica is None:
        raise InferenceServerException("no Triton replica configured", status="StatusCode.UNAVAILABLE")
    async with backend.pool.lease(replica) as client:
        return await call(client)


async def enhancer_outputs(backend: TritonBackend, name: str, version: str) -> EnhancerOutputs:
    """Read the enhancer's outputs and ``op_names`` from Triton (metadata and config)."""

    async def fetch(client: Any) -> tuple[Any, Any]:
        timeout = min(backend.timeout_s, 5.0)
        meta = await client.get_model_metadata(name, as_json=True, client_timeout=timeout)
        config = await client.get_model_config(name, as_json=True, client_timeout=timeout)
        return meta, config["config"]

    meta, config = await _on_a_replica(backend, fetch)
    outputs = [o["name"] for o in meta.get("outputs", [])]
    image_output = ENHANCED_IMAGE if ENHANCED_IMAGE in outputs else outputs[0]
    if OP_WEIGHTS not in outputs:
        return EnhancerOutputs(
            version,
            image_output,
            None,
            (),
            f"the served enhancer ({name} v{version}) has no {OP_WEIGHTS} output: it was exported before op weights "
            "were served; re-export the model repository to see which operations it uses",
        )
    raw = config.get("parameters", {}).get(OP_NAMES_PARAMETER, {}).get("string_value", "")
    op_names = tuple(n.strip() for n in raw.split(",") if n.strip())
    return EnhancerOutputs(version, image_output, OP_WEIGHTS, op_names, None)


async def enhance(
    backend: TritonBackend, name: str, pixels: Pixels, outputs: EnhancerOutputs, request_id: str = ""
) -> Enhanced:
    """One image through the enhancer: its image and (when served) op weights in one Triton call.

    Without ``OP_WEIGHTS``, or if that call fails for any reason but a deadline, the image comes from
    ``backend.infer`` (with its replica retry and error translation) and the note says what happened."""
    if outputs.weights_output is not None:
        info = await backend.model_info(name)
        batch = pixels[None] if info.max_batch_size > 0 else pixels
        tensor = InferInput(info.input_name, list(batch.shape), IMAGE_DATATYPE)
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.uint8))
        requested = [InferRequestedOutput(outputs.image_output), InferRequestedOutput(outputs.weights_output)]
        start = time.perf_counter()

        async def infer(client: Any) -> Any:
            return await client.infer(
                name, [tensor], outputs=requested, request_id=request_id, client_timeout=backend.timeout_s
            )

        try:
            result = await _on_a_replica(backend, infer)
        except InferenceServerException as exc:
            if "DEADLINE_EXCEEDED" in str(exc.status() or ""):
                raise BackendTimeout(f"model {name!r} did not answer within {backend.timeout_s:g} s") from None
            note: str | None = f"op weights unavailable for this request ({exc.message() or exc})"
            log.warning("enhancer call with %s failed, retrying without: %s", OP_WEIGHTS, exc)
        else:
            image = result.as_numpy(outputs.image_output).reshape(pixels.shape)
            weights = result.as_numpy(outputs.weights_output).reshape(-1).astype(np.float32)
            op_names = outputs.op_names
            if len(op_names) != len(weights):  # no or stale op_names: still show the weights, by position
                op_names = tuple(f"op{i}" for i in range(len(weights)))
            version = result.get_response().model_version or outputs.version
            return Enhanced(image, weights, op_names, version, time.perf_counter() - start, None)
    else:
        note = outputs.note
    plain = await backend.infer(name, pixels[None], request_id=request_id)
    return Enhanced(plain.array.reshape(pixels.shape), None, (), plain.version, plain.seconds, note)


class Playground:
    """Per-app state of the panel: the corruption worker and the enhancer's outputs (cached per version)."""

    def __init__(self, worker: CorruptionWorker | None = None) -> None:
        self.worker = worker or CorruptionWorker()
        self._outputs: dict[tuple[str, str], EnhancerOutputs] = {}
        self._warming: asyncio.Task[None] | None = None

    async def outputs(self, backend: TritonBackend, name: str) -> EnhancerOutputs:
        version = (await backend.model_info(name)).version
        key = (name, version)
        if key not in self._outputs:
            try:
                self._outputs[key] = await enhancer_outputs(backend, name, version)
            except (InferenceServerException, LookupError, TypeError) as exc:  # not cached: asked again next time
                note = f"could not read the enhancer's outputs from Triton ({exc}); op weights not shown"
                return EnhancerOutputs(version, ENHANCED_IMAGE, None, (), note)
        return self._outputs[key]

    def warm(self) -> None:
        """Start the corruption worker in the background (the page asks for the options when it loads)."""
        if self._warming is None or self._warming.done():
            self._warming = asyncio.get_running_loop().create_task(self.worker.warm())

    async def close(self) -> None:
        await asyncio.to_thread(self.worker.close)
