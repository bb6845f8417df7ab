"""POST /v1/classify and POST /v1/enhance: uploads in, predictions or the enhanced image out."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from dyntta.contract import softmax
from dyntta.data.preprocess import RESIZE, Preprocess
from serve.config import Settings
from serve.decode_pool import DecodePool
from serve.deps import ResourcesDep, require_api_key
from serve.errors import MissingField, PayloadTooLarge
from serve.imaging import Upload, cheap_to_decode, decode_batch, encode_png
from serve.observability import current_request_id
from serve.routes import UPLOAD_ERRORS
from serve.schemas import ClassifyResponse, ImageResult, ModelRef, Prediction, Timing

router = APIRouter(prefix="/v1", tags=["inference"], dependencies=[Depends(require_api_key)])


async def _read(files: list[UploadFile], settings: Settings) -> list[Upload]:
    if len(files) > settings.max_images:
        raise PayloadTooLarge(f"{len(files)} images in one request; at most {settings.max_images}")
    uploads = []
    for i, f in enumerate(files):
        uploads.append(Upload(f.filename or f"image{i}", f.content_type or "", await f.read()))
        await f.close()
    return uploads


async def decode(
    uploads: list[Upload], size: int, settings: Settings, pool: DecodePool, policy: Preprocess = RESIZE
) -> npt.NDArray[np.uint8]:
    """Tiny uploads (their cost is bounded by their few bytes) are decoded on the event loop, faster than
    any hop; everything else in a decoding process under the per-request CPU limit (serve.decode_pool).
    ``policy``: the served model's preprocessing (``ModelInfo.preprocess``)."""
    limits = (size, settings.max_image_pixels, settings.max_request_pixels, policy)
    if cheap_to_decode(uploads, settings.max_image_pixels, settings.max_request_pixels):
        return decode_batch(uploads, *limits)
    return await pool.run(decode_batch, uploads, *limits)


def _images(files: list[UploadFile] | None, file: list[UploadFile] | None) -> list[UploadFile]:
    images = [*(files or []), *(file or [])]
    if not images:
        raise MissingField("no image in the request: send multipart field 'files' (or 'file'), e.g. -F file=@x.jpg")
    return images


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=UPLOAD_ERRORS,
    summary="Classify one or more images, with or without the enhancer",
)
async def classify(
    deps: ResourcesDep,
    files: Annotated[list[UploadFile] | None, File(description="image files (JPEG, PNG, WebP, BMP), any size")] = None,
    file: Annotated[list[UploadFile] | None, File(description="the same, for clients that name it 'file'")] = None,
    enhance: Annotated[bool, Query(description="enhancer -> recognizer (the ensemble); false: recognizer")] = True,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return per image")] = 5,
) -> ClassifyResponse:
    start = time.perf_counter()
    backend, settings = deps.backend, deps.settings
    model = settings.ensemble_model if enhance else settings.recognizer_model
    async with deps.admission.slot():  # a slot first: nothing is decoded or sent to Triton without one
        uploads = await _read(_images(files, file), settings)
        info = await backend.model_info(model)
        decode_start = time.perf_counter()
        pixels = await decode(uploads, info.input_size, settings, deps.decoder, info.preprocess)
        decoded = time.perf_counter()
        output = await backend.infer(model, pixels, request_id=current_request_id())
    deps.metrics.inference.labels(model).observe(output.seconds)
    deps.metrics.images.labels("classify").inc(len(uploads))
    probabilities = softmax(output.array.reshape(len(uploads), -1))
    labels = info.labels or tuple(str(i) for i in range(probabilities.shape[1]))
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    results = [
        ImageResult(
            filename=upload.filename,
            top_k=[
                Prediction(
                    index=int(j), label=labels[j] if j < len(labels) else str(j), probability=float(probabilities[i, j])
                )
                for j in order[i]
            ],
        )
        for i, upload in enumerate(uploads)
    ]
    end = time.perf_counter()
    return ClassifyResponse(
        model=ModelRef(name=model, version=output.version),
        enhanced=enhance,
        input_size=info.input_size,
        results=results,
        timing=Timing(
            decode_ms=round(1e3 * (decoded - decode_start), 3),
            inference_ms=round(1e3 * output.seconds, 3),
            total_ms=round(1e3 * (end - start), 3),
        ),
    )


@router.post(
    "/enhance",
    responses={
        200: {"content": {"image/png": {}}, "description": "the enhanced image at the model's input size"},
        **UPLOAD_ERRORS,
    },
    response_class=Response,
    summary="Return the enhancer's output for one image, as PNG",
)
async def enhance(
    file: Annotated[UploadFile, File(description="one image file (JPEG, PNG, WebP, BMP)")],
    deps: ResourcesDep,
) -> Response:
    backend, settings, model = deps.backend, deps.settings, deps.settings.enhancer_model
    async with deps.admission.slot():
        (upload,) = await _read([file], settings)
        info = await backend.model_info(model)
        pixels = await decode([upload], info.input_size, settings, deps.decoder, info.preprocess)
        output = await backend.infer(model, pixels, request_id=current_request_id())
    deps.metrics.inference.labels(model).observe(output.seconds)
    deps.metrics.images.labels("enhance").inc()
    png = await run_in_threadpool(encode_png, output.array[0])
    return Response(
        png,
        media_type="image/png",
        headers={"X-Model": f"{output.model}/{output.version}", "X-Inference-Ms": f"{1e3 * output.seconds:.3f}"},
    )
