"""The gateway's only road to the models: a pool of Triton replicas (``serve.triton.pool``) per app.

Every call goes to the replica the pool picks (up, fewest calls in flight). A call that fails because of the
replica (connection error, UNAVAILABLE, the model not loaded there) marks it down and is retried once on
another replica: inference is idempotent, and the client sees no error when one of several replicas dies.
Model facts (input name and size, output name, batch limit, labels, version, the preprocessing policy and
the enhancer's op names) are read from Triton itself, so the gateway follows whatever repository the
server loaded. Labels come through Triton's classification
extension (``label_filename`` in the model config), which works for a local or a remote server alike.
Triton failures become :mod:`serve.errors` exceptions: unreachable or model not ready -> 503, deadline
-> 504, anything else -> 502.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient
from prometheus_client import CollectorRegistry
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from dyntta.contract import (
    ENHANCED_IMAGE,
    LOGITS,
    OP_NAMES_PARAMETER,
    PREPROCESS_PARAMETER,
    TRAINING_PARAMETER,
    Training,
    parse_classification,
)
from dyntta.data.preprocess import RESIZE, Preprocess
from serve.errors import ApiError, BackendError, BackendTimeout, BackendUnavailable
from serve.triton.pool import PoolCollector, Replica, ReplicaPool, ReplicaState, ReplicaStatus

log = logging.getLogger("serve.inference")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_name: str
    input_size: int
    output_name: str
    output_datatype: str
    max_batch_size: int
    labels: tuple[str, ...] | None = None
    #: how an upload becomes input_size x input_size (the config's ``preprocess`` parameter; plain resize
    #: for a repository exported before the parameter existed)
    preprocess: Preprocess = RESIZE
    #: every output the model serves, in its metadata's order
    outputs: tuple[str, ...] = ()
    #: the enhancer's operation names (``op_names`` parameter), the columns of its ``OP_WEIGHTS`` output
    op_names: tuple[str, ...] | None = None
    #: how the model was trained (the config's ``training`` parameter; None when it has none)
    training: Training | None = None

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else len(self.labels)


@dataclass(frozen=True)
class InferOutput:
    array: np.ndarray[Any, Any]
    model: str
    version: str
    seconds: float


@dataclass(frozen=True)
class InferOutputs:
    """Several named outputs of one request (:meth:`TritonBackend.infer_outputs`)."""

    arrays: dict[str, np.ndarray[Any, Any]]
    model: str
    version: str
    seconds: float


def config_parameters(config: dict[str, Any]) -> dict[str, str]:
    """A model config's (as JSON) ``parameters`` as plain strings."""
    raw = config.get("parameters") or {}
    return {str(k): str((v or {}).get("string_value", "")) for k, v in raw.items()}


def _main_output(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The output the gateway classifies or returns: the contract's ``LOGITS`` / ``ENHANCED_IMAGE`` if the
    model has it (the enhancer may serve ``OP_WEIGHTS`` beside it), else the first."""
    for output in outputs:
        if output["name"] in (LOGITS, ENHANCED_IMAGE):
            return output
    return outputs[0]


#: gRPC statuses that say "this replica cannot serve now" (not "this request is wrong"): try another
_REPLICA_FAILURES = ("UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED", "NOT_FOUND")

T = TypeVar("T")


class TritonBackend:
    """Async access to Triton's models over one or more replicas. Create inside the event loop that will
    use it (gRPC aio binds to it), then ``await start()``.

    ``urls``: one ``--triton-url`` or several (see :func:`serve.triton.parse_triton_url` for the rule);
    ``models``: the models every replica must serve to count as up; ``registry``: where the per-replica
    metrics go (``dyntta_gateway_triton_replica_*``).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        models: Sequence[str] = ("dyntta", "recognizer", "enhancer"),
        timeout_s: float = 30.0,
        max_inflight: int = 64,
        registry: CollectorRegistry | None = None,
        **pool_options: Any,
    ) -> None:
        self.pool = ReplicaPool(urls, models, **pool_options)
        self.url = ", ".join(r.address for r in self.pool.replicas)
        self.timeout_s = timeout_s
        self._info: dict[str, ModelInfo] = {}
        self._info_lock = asyncio.Lock()
        # bounds what one gateway piles onto Triton; waiting for a slot counts against the deadline
        self._slots = asyncio.Semaphore(max_inflight)
        self._registry = registry
        self._collector = PoolCollector(self.pool)
        if registry is not None:
            registry.register(self._collector)

    async def start(self) -> None:
        """Probe the replicas once and keep probing them in the background."""
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()
        if self._registry is not None:
            self._registry.unregister(self._collector)
            self._registry = None

    # --- health ---------------------------------------------------------------------------------------

    async def is_live(self) -> bool:
        """Probe every replica now; True if at least one is live and serves every model."""
        await self.pool.probe_all()
        return self.pool.ready

    async def models_ready(self, names: Sequence[str]) -> dict[str, bool]:
        """Per model: ready on at least one replica that is up (probed by :meth:`is_live`)."""
        up = [r for r in self.pool.replicas if r.state is ReplicaState.UP]

        async def one(name: str) -> bool:
            for replica in up:
                try:
                    if await replica.client.is_model_ready(name, client_timeout=min(self.timeout_s, 2.0)):
                        return True
                except InferenceServerException:
                    continue
            return False

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

    def replicas(self) -> list[ReplicaStatus]:
        return self.pool.status()

    # --- model facts ----------------------------------------------------------------------------------

    async def model_info(self, name: str) -> ModelInfo:
        info = self._info.get(name)
        if info is not None:
            return info
        async with self._info_lock:
            if name not in self._info:
                self._info[name] = await self._fetch_info(name)
            return self._info[name]

    def forget(self, name: str | None = None) -> None:
        """Drop cached model facts (after Triton restarted or reloaded a model)."""
        if name is None:
            self._info.clear()
        else:
            self._info.pop(name, None)

    async def _fetch_info(self, name: str) -> ModelInfo:
        async def fetch(client: grpcclient.InferenceServerClient, timeout: float) -> tuple[Any, Any]:
            meta = await client.get_model_metadata(name, as_json=True, client_timeout=timeout)
            config = (await client.get_model_config(name, as_json=True, client_timeout=timeout))["config"]
            return meta, config

        meta, config = await self._on_a_replica(name, fetch)
        inp, out = meta["inputs"][0], _main_output(meta["outputs"])
        shape = [int(d) for d in inp["shape"]]
        if len(shape) < 3 or shape[-1] != 3 or shape[-2] != shape[-3] or shape[-2] <= 0:
            raise BackendError(f"model {name!r} input {inp['name']} has shape {shape}; expected [-1, S, S, 3]")
        parameters = config_parameters(config)
        try:
            preprocess = Preprocess.from_json(parameters.get(PREPROCESS_PARAMETER))
        except ValueError as exc:
            raise BackendError(f"model {name!r} has an invalid {PREPROCESS_PARAMETER} parameter: {exc}") from None
        names = parameters.get(OP_NAMES_PARAMETER)
        try:
            training = Training.from_json(parameters.get(TRAINING_PARAMETER))
        except ValueError as exc:  # provenance only: serve the model, say nothing about its training
            log.warning("model %r has an invalid %s parameter, ignored: %s", name, TRAINING_PARAMETER, exc)
            training = None
        info = ModelInfo(
            name=name,
            version=str(max((meta.get("versions") or ["1"]), key=lambda v: int(v) if v.isdigit() else 0)),
            input_name=inp["name"],
            input_size=shape[-2],
            output_name=out["name"],
            output_datatype=out["datatype"],
            max_batch_size=int(config.get("max_batch_size", 0) or 0),
            preprocess=preprocess,
            outputs=tuple(o["name"] for o in meta["outputs"]),
            op_names=tuple(names.split(",")) if names else None,
            training=training,
        )
        if out["datatype"] in ("FP32", "FP16") and len(out["shape"]) >= 1:
            labels = await self._probe_labels(info, int(out["shape"][-1]))
            info = dataclasses.replace(info, labels=labels)
        return info

    async def _probe_labels(self, info: ModelInfo, num_classes: int) -> tuple[str, ...]:
        """Ask for every class through the classification extension once; the labels come back with it."""
        if num_classes <= 0:
            raise BackendError(f"model {info.name!r} has a variable number of classes")
        pixels = np.zeros((1, info.input_size, info.input_size, 3), dtype=np.uint8)
        result = await self._call(info, pixels, class_count=num_classes)
        return parse_classification(result.as_numpy(info.output_name).reshape(-1), num_classes)

    # --- inference ------------------------------------------------------------------------------------

    async def infer_outputs(
        self, name: str, images: np.ndarray[Any, Any], outputs: Sequence[str], request_id: str = ""
    ) -> InferOutputs:
        """uint8 (N, S, S, 3) -> the named outputs (e.g. the enhancer's ``ENHANCED_IMAGE`` and
        ``OP_WEIGHTS``), N images in one request (N <= the model's batch limit)."""
        info = await self.model_info(name)
        missing = [o for o in outputs if o not in info.outputs]
        if missing:
            raise BackendError(f"model {name!r} has no output {', '.join(missing)} (it has {', '.join(info.outputs)})")
        if info.max_batch_size <= 0 or len(images) > info.max_batch_size:
            raise BackendError(f"internal: {len(images)} images in one request to model {name!r}")
        start = time.perf_counter()
        result = await self._call(info, images, request_id=request_id, outputs=outputs)
        arrays = {o: result.as_numpy(o) for o in outputs}
        version = result.get_response().model_version or info.version
        return InferOutputs(arrays, name, version, time.perf_counter() - start)

    async def infer(self, name: str, images: np.ndarray[Any, Any], request_id: str = "") -> InferOutput:
        """uint8 (N, S, S, 3) -> the model's first output for each image, split to the model's batch limit.
        ``request_id`` is passed to Triton (its logs and traces carry it)."""
        info = await self.model_info(name)
        if images.ndim != 4 or images.shape[1:] != (info.input_size, info.input_size, 3):
            raise BackendError(f"internal: images of shape {images.shape} for model {name!r}")
        start = time.perf_counter()
        step = info.max_batch_size if info.max_batch_size > 0 else 1
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        results = await asyncio.gather(*(self._call(info, chunk, request_id=request_id) for chunk in chunks))
        arrays = [r.as_numpy(info.output_name) for r in results]
        if info.max_batch_size <= 0:
            arrays = [a[None] for a in arrays]
        version = results[0].get_response().model_version or info.version
        return InferOutput(np.concatenate(arrays), name, version, time.perf_counter() - start)

    def infer_blocking(self, name: str, images: np.ndarray[Any, Any], loop: asyncio.AbstractEventLoop) -> InferOutput:
        """From a worker thread: run :meth:`infer` on the app's loop (the clients stay on their loop)."""
        return asyncio.run_coroutine_threadsafe(self.infer(name, images), loop).result()

    async def _call(
        self,
        info: ModelInfo,
        pixels: np.ndarray[Any, Any],
        class_count: int = 0,
        request_id: str = "",
        outputs: Sequence[str] = (),
    ) -> grpcclient.InferResult:
        batch = pixels if info.max_batch_size > 0 else pixels[0]
        tensor = InferInput(info.input_name, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        requested = [InferRequestedOutput(o) for o in outputs] or [
            InferRequestedOutput(info.output_name, class_count=class_count)
        ]
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise BackendUnavailable(
                f"gateway overloaded: no inference slot free within {self.timeout_s:g} s; retry later"
            ) from None

        async def infer(client: grpcclient.InferenceServerClient, timeout: float) -> grpcclient.InferResult:
            return await client.infer(
                info.name, [tensor], outputs=requested, request_id=request_id, client_timeout=timeout
            )

        try:
            return await self._on_a_replica(info.name, infer)
        finally:
            self._slots.release()

    async def _on_a_replica(
        self, model: str, call: Callable[[grpcclient.InferenceServerClient, float], Awaitable[T]]
    ) -> T:
        """``call(client, seconds_left)`` on the picked replica; on a replica failure, mark it down and
        retry once on another. One deadline covers both tries."""
        deadline = time.monotonic() + self.timeout_s
        tried: list[Replica] = []
        while True:
            replica = self.pool.pick(exclude=tried)
            if replica is None:  # no replica configured (cannot happen: the pool needs one URL)
                raise BackendUnavailable("no Triton replica configured")
            try:
                async with self.pool.lease(replica) as client:
                    return await call(client, max(deadline - time.monotonic(), 1e-6))
            except InferenceServerException as exc:
                status, message = str(exc.status() or ""), str(exc.message() or exc)
                if not any(code in status for code in _REPLICA_FAILURES) and "not ready" not in message.lower():
                    self.pool.record_error(replica, f"{status} {message}".strip())
                    raise self._translate(exc, model, replica.address) from None
                self.pool.mark_down(replica, f"{status} {message}".strip())
                tried.append(replica)
                if len(tried) >= 2 or not self.pool.has_other(replica) or time.monotonic() >= deadline:
                    raise self._translate(exc, model, replica.address) from None
                replica.retried += 1
                log.info("retrying %s on another replica after %s from %s", model, status, replica.address)

    def _translate(self, exc: InferenceServerException, model: str, address: str) -> ApiError:
        status, message = str(exc.status() or ""), str(exc.message() or exc)
        if "DEADLINE_EXCEEDED" in status:
            return BackendTimeout(f"model {model!r} did not answer within {self.timeout_s:g} s")
        if "UNAVAILABLE" in status or "RESOURCE_EXHAUSTED" in status or "CANCELLED" in status:
            self.forget()
            return BackendUnavailable(
                f"inference server at {address} is unreachable or restarting; retry shortly ({message})"
            )
        if "NOT_FOUND" in status or "not ready" in message.lower() or "unavailable" in message.lower():
            self.forget(model)
            return BackendUnavailable(f"model {model!r} is not loaded or not ready on {address} ({message})")
        log.warning("Triton error for %s: %s %s", model, status, message)
        return BackendError(f"inference server error for model {model!r}: {message}")
