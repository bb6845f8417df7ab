"""POST /v1/playground: the web page's "try a corruption" panel. One upload, optionally corrupted (in the
corruption worker, see :mod:`serve.playground`), classified by the recognizer alone and after the enhancer;
the clean, corrupted and enhanced images come back as PNG data URIs with the enhancer's op weights."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from dyntta.contract import softmax
from serve.deps import ResourcesDep, require_api_key
from serve.errors import BackendError
from serve.imaging import Upload, encode_png
from serve.inference import InferOutput, ModelInfo
from serve.observability import current_request_id
from serve.playground import Enhanced, Pixels, Playground, enhance, options, parse_choice
from serve.routes import UPLOAD_ERRORS
from serve.routes.inference import decode
from serve.schemas import (
    EnhancerOps,
    ModelRef,
    OpWeight,
    PathPredictions,
    PlaygroundImages,
    PlaygroundOptions,
    PlaygroundResponse,
    PlaygroundTiming,
    Prediction,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The panel's state per app; the corruption process (if it was ever started) stops with the app."""
    app.state.playground = Playground()
    try:
        yield
    finally:
        await app.state.playground.close()


router = APIRouter(prefix="/v1", tags=["playground"], dependencies=[Depends(require_api_key)], lifespan=lifespan)


async def get_playground(request: Request) -> Playground:
    panel: Playground = request.app.state.playground
    return panel


PlaygroundDep = Annotated[Playground, Depends(get_playground)]


def _data_uri(pixels: Pixels) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


def _top_k(logits: npt.NDArray[np.float32], info: ModelInfo, k: int) -> list[Prediction]:
    probabilities = softmax(logits.reshape(1, -1))[0]
    labels = info.labels or tuple(str(i) for i in range(len(probabilities)))
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(probabilities))]
    return [
        Prediction(index=int(j), label=labels[j] if j < len(labels) else str(j), probability=float(probabilities[j]))
        for j in order
    ]


def _ops(enhanced: Enhanced) -> EnhancerOps:
    if enhanced.weights is None:
        return EnhancerOps(available=False, message=enhanced.note)
    order = np.argsort(-enhanced.weights, kind="stable")
    return EnhancerOps(
        available=True,
        weights=[OpWeight(name=enhanced.op_names[i], weight=float(enhanced.weights[i])) for i in order],
    )


@router.get(
    "/playground",
    response_model=PlaygroundOptions,
    summary="The corruptions and severities the panel offers (also starts the corruption worker)",
)
async def playground_options(playground: PlaygroundDep) -> PlaygroundOptions:
    playground.warm()  # the page asks when it loads: the worker imports torch while the user chooses
    corruptions, severities = options()
    return PlaygroundOptions(corruptions=corruptions, severities=severities)


@router.post(
    "/playground",
    response_model=PlaygroundResponse,
    responses=UPLOAD_ERRORS,
    summary="Corrupt an image (or take an already corrupted one), enhance it and classify it both ways",
)
async def playground(
    deps: ResourcesDep,
    panel: PlaygroundDep,
    file: Annotated[UploadFile, File(description="one image file (JPEG, PNG, WebP, BMP)")],
    corruption: Annotated[
        str, Form(description="a corruption name (e.g. gaussian_noise); 'none': the upload is already corrupted")
    ] = "none",
    severity: Annotated[str, Form(description="1 to 5")] = "3",
    seed: Annotated[int, Form(ge=0, le=2**63 - 1, description="keys the corruption's random numbers")] = 0,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return per path")] = 5,
) -> PlaygroundResponse:
    start = time.perf_counter()
    choice = parse_choice(corruption, severity)  # 422 before any work
    backend, settings = deps.backend, deps.settings
    recognizer, enhancer = settings.recognizer_model, settings.enhancer_model
    async with deps.admission.slot():
        upload = Upload(file.filename or "upload", file.content_type or "", await file.read())
        await file.close()
        rec_info, enh_info = await backend.model_info(recognizer), await backend.model_info(enhancer)
        if rec_info.input_size != enh_info.input_size:
            raise BackendError(
                f"the served {enhancer!r} ({enh_info.input_size} px) and {recognizer!r} "
                f"({rec_info.input_size} px) disagree on the input size"
            )
        decode_start = time.perf_counter()
        clean = (await decode([upload], rec_info.input_size, settings, deps.decoder, rec_info.preprocess))[0]
        corrupt_start = time.perf_counter()
        corrupted = clean if choice is None else await panel.worker.run(clean, *choice, seed)
        corrupt_end = time.perf_counter()
        request_id = current_request_id()
        enhanced = await enhance(backend, enhancer, corrupted, request_id)
        # the recognizer alone on the corrupted image and on the enhanced one: one call, two images
        logits: InferOutput = await backend.infer(recognizer, np.stack([corrupted, enhanced.image]), request_id)
    deps.metrics.inference.labels(enhancer).observe(enhanced.seconds)
    deps.metrics.inference.labels(recognizer).observe(logits.seconds)
    deps.metrics.images.labels("playground").inc()
    clean_uri, corrupted_uri, enhanced_uri = await run_in_threadpool(
        lambda: (None if choice is None else _data_uri(clean), _data_uri(corrupted), _data_uri(enhanced.image))
    )
    recognizer_ref = ModelRef(name=recognizer, version=logits.version)
    return PlaygroundResponse(
        corruption=None if choice is None else choice[0],
        severity=None if choice is None else choice[1],
        seed=seed,
        input_size=rec_info.input_size,
        enhancer=ModelRef(name=enhancer, version=enhanced.version),
        images=PlaygroundImages(clean=clean_uri, corrupted=corrupted_uri, enhanced=enhanced_uri),
        recognizer=PathPredictions(model=recognizer_ref, top_k=_top_k(logits.array[0], rec_info, top_k)),
        enhanced=PathPredictions(model=recognizer_ref, top_k=_top_k(logits.array[1], rec_info, top_k)),
        ops=_ops(enhanced),
        timing=PlaygroundTiming(
            decode_ms=round(1e3 * (corrupt_start - decode_start), 3),
            corrupt_ms=round(1e3 * (corrupt_end - corrupt_start), 3),
            inference_ms=round(1e3 * (enhanced.seconds + logits.seconds), 3),
            total_ms=round(1e3 * (time.perf_counter() - start), 3),
        ),
    )
