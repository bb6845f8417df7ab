"""The gateway's only road to the models: one async gRPC Triton client per app.

Model facts (input name and size, output name, batch limit, labels, version) are read from Triton itself,
so the gateway follows whatever repository the server loaded. Labels come through Triton's classification
extension (``label_filename`` in the model config), which works for a local or a remote server alike.
Triton failures become :mod:`serve.errors` exceptions: unreachable or model not ready -> 503, deadline
-> 504, anything else -> 502.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from serve.errors import ApiError, BackendError, BackendTimeout, BackendUnavailable

log = logging.getLogger("serve.inference")

_MAX_MESSAGE = 2**31 - 1
#: gRPC's default reconnect backoff grows to 2 minutes; a restarted Triton should be used within a second.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 2**31 - 1),
]


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

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else len(self.labels)


@dataclass(frozen=True)
class InferOutput:
    array: np.ndarray
    model: str
    version: str
    seconds: float


def normalise_grpc_url(url: str) -> str:
    """Accept ``host:port`` or ``grpc://host:port``."""
    for prefix in ("grpc://", "dns:///"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    if "://" in url:
        raise ValueError(f"--triton-url must be a gRPC address host:port (got {url!r})")
    return url


class TritonBackend:
    """Async access to Triton's models. Create inside the event loop that will use it (gRPC aio binds it)."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, max_inflight: int = 64) -> None:
        self.url = normalise_grpc_url(url)
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS)
        self._info: dict[str, ModelInfo] = {}
        self._info_lock = asyncio.Lock()
        # bounds what one gateway piles onto Triton; waiting for a slot counts against the deadline
        self._slots = asyncio.Semaphore(max_inflight)

    async def close(self) -> None:
        await self._client.close()

    # --- health ---------------------------------------------------------------------------------------

    async def is_live(self) -> bool:
        try:
            return bool(await self._client.is_server_live(client_timeout=min(self.timeout_s, 2.0)))
        except InferenceServerException:
            return False

    async def models_ready(self, names: Sequence[str]) -> dict[str, bool]:
        async def one(name: str) -> bool:
            try:
                return bool(await self._client.is_model_ready(name, client_timeout=min(self.timeout_s, 2.0)))
            except InferenceServerException:
                return False

        return dict(zip(names, await asyncio.gather(*(one(n) for n in names)), strict=True))

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
        try:
            meta = await self._client.get_model_metadata(name, as_json=True, client_timeout=self.timeout_s)
            config = (await self._client.get_model_config(name, as_json=True, client_timeout=self.timeout_s))["config"]
        except InferenceServerException as exc:
            raise self._translate(exc, name) from None
        inp, out = meta["inputs"][0], meta["outputs"][0]
        shape = [int(d) for d in inp["shape"]]
        if len(shape) < 3 or shape[-1] != 3 or shape[-2] != shape[-3] or shape[-2] <= 0:
            raise BackendError(f"model {name!r} input {inp['name']} has shape {shape}; expected [-1, S, S, 3]")
        info = ModelInfo(
            name=name,
            version=str(max((meta.get("versions") or ["1"]), key=lambda v: int(v) if v.isdigit() else 0)),
            input_name=inp["name"],
            input_size=shape[-2],
            output_name=out["name"],
            output_datatype=out["datatype"],
            max_batch_size=int(config.get("max_batch_size", 0) or 0),
        )
        if out["datatype"] in ("FP32", "FP16") and len(out["shape"]) >= 1:
            labels = await self._probe_labels(info, int(out["shape"][-1]))
            info = ModelInfo(**{**info.__dict__, "labels": labels})
        return info

    async def _probe_labels(self, info: ModelInfo, num_classes: int) -> tuple[str, ...]:
        """Ask for every class through the classification extension once; the labels come back with it."""
        if num_classes <= 0:
            raise BackendError(f"model {info.name!r} has a variable number of classes")
        pixels = np.zeros((1, info.input_size, info.input_size, 3), dtype=np.uint8)
        result = await self._call(info, pixels, class_count=num_classes)
        labels = [str(i) for i in range(num_classes)]
        for entry in result.as_numpy(info.output_name).reshape(-1):
            parts = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
            if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < num_classes:
                labels[int(parts[1])] = parts[2]
        return tuple(labels)

    # --- inference ------------------------------------------------------------------------------------

    async def infer(self, name: str, images: np.ndarray) -> InferOutput:
        """uint8 (N, S, S, 3) -> the model's first output for each image, split to the model's batch limit."""
        info = await self.model_info(name)
        if images.ndim != 4 or images.shape[1:] != (info.input_size, info.input_size, 3):
            raise BackendError(f"internal: images of shape {images.shape} for model {name!r}")
        start = time.perf_counter()
        step = info.max_batch_size if info.max_batch_size > 0 else 1
        chunks = [images[i : i + step] for i in range(0, len(images), step)]
        results = await asyncio.gather(*(self._call(info, chunk) for chunk in chunks))
        arrays = [r.as_numpy(info.output_name) for r in results]
        if info.max_batch_size <= 0:
            arrays = [a[None] for a in arrays]
        version = results[0].get_response().model_version or info.version
        return InferOutput(np.concatenate(arrays), name, version, time.perf_counter() - start)

    def infer_blocking(self, name: str, images: np.ndarray, loop: asyncio.AbstractEventLoop) -> InferOutput:
        """From a worker thread: run :meth:`infer` on the app's loop (the one client stays on its loop)."""
        return asyncio.run_coroutine_threadsafe(self.infer(name, images), loop).result()

    async def _call(self, info: ModelInfo, pixels: np.ndarray, class_count: int = 0) -> grpcclient.InferResult:
        batch = pixels if info.max_batch_size > 0 else pixels[0]
        tensor = InferInput(info.input_name, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch))
        outputs = [InferRequestedOutput(info.output_name, class_count=class_count)]
        deadline = time.monotonic() + self.timeout_s
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise BackendUnavailable(
                f"gateway overloaded: no inference slot free within {self.timeout_s:g} s; retry later"
            ) from None
        try:
            return await self._client.infer(
                info.name, [tensor], outputs=outputs, client_timeout=max(deadline - time.monotonic(), 0.001)
            )
        except InferenceServerException as exc:
            raise self._translate(exc, info.name) from None
        finally:
            self._slots.release()

    def _translate(self, exc: InferenceServerException, model: str) -> ApiError:
        status, message = str(exc.status() or ""), str(exc.message() or exc)
        if "DEADLINE_EXCEEDED" in status:
            return BackendTimeout(f"model {model!r} did not answer within {self.timeout_s:g} s")
        if "UNAVAILABLE" in status or "RESOURCE_EXHAUSTED" in status or "CANCELLED" in status:
            self.forget()
            return BackendUnavailable(
                f"inference server at {self.url} is unreachable or restarting; retry shortly ({message})"
            )
        if "NOT_FOUND" in status or "not ready" in message.lower() or "unavailable" in message.lower():
            self.forget(model)
            return BackendUnavailable(f"model {model!r} is not loaded or not ready on {self.url} ({message})")
        log.warning("Triton error for %s: %s %s", model, status, message)
        return BackendError(f"inference server error for model {model!r}: {message}")
