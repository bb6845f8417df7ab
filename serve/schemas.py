"""Pydantic models for every request and response of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from dyntta.evaluate.schema import Report


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable error kind, e.g. unsupported_media_type")
    message: str = Field(description="what went wrong and what to do about it")
    detail: Any | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    index: int
    label: str
    probability: float = Field(ge=0.0, le=1.0, description="softmax of the model's logits")


class ImageResult(BaseModel):
    filename: str
    top_k: list[Prediction]


class Timing(BaseModel):
    decode_ms: float
    inference_ms: float
    total_ms: float


class ClassifyResponse(BaseModel):
    model: ModelRef
    enhanced: bool = Field(description="true: enhancer -> recognizer ensemble; false: recognizer alone")
    input_size: int = Field(description="side of the square uint8 RGB image the model receives")
    results: list[ImageResult]
    timing: Timing


class TrainingDescription(BaseModel):
    method: str | None = Field(None, description="the recognizer's training method: erm, dpl, damp, advbn, ...")
    loss: str | None = Field(None, description="the objective, where the checkpoint states it (the enhancer)")
    command: str | None = Field(None, description="the command that trained the model")


class ModelDescription(BaseModel):
    name: str
    version: str
    input_size: int
    max_batch_size: int
    labels: list[str] | None = None
    training: TrainingDescription | None = Field(
        None, description="how the model was trained, from its checkpoint (none for the ensemble or a bare ONNX)"
    )


class ModelsResponse(BaseModel):
    triton_url: str
    models: list[ModelDescription]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    triton_url: str
    triton_live: bool
    models: dict[str, bool]
    message: str | None = None


JobState = Literal["queued", "running", "done", "failed", "interrupted"]


class JobStatus(BaseModel):
    id: str
    status: JobState
    progress: float = Field(ge=0.0, le=1.0)
    message: str = ""
    created: str
    updated: str
    source: str = Field(description="'builtin' (Fashion-MNIST test subset) or the uploaded zip's name")
    num_images: int
    corruptions: list[str]
    severities: list[int]
    with_enhancer: bool
    seed: int
    error: str | None = None
    report_url: str | None = None
    report_html_url: str | None = None


class JobList(BaseModel):
    jobs: list[JobStatus]


class RobustnessReport(BaseModel):
    job: JobStatus
    report: Report = Field(description="the report as written by dyntta.evaluate (format dyntta.robustness-report/1)")


# --- the "try a corruption" panel (POST /v1/playground) ---------------------------------------------------


class PlaygroundImages(BaseModel):
    """PNG data URIs (``data:image/png;base64,...``), all at the model's input size."""

    clean: str | None = Field(description="the upload as the model receives it; null when it came already corrupted")
    corrupted: str = Field(description="what the recognizer alone classifies: the upload corrupted, or as uploaded")
    enhanced: str = Field(description="the enhancer's output for the corrupted image (its ENHANCED_IMAGE)")


class PathPredictions(BaseModel):
    model: ModelRef = Field(description="the model that produced the logits")
    top_k: list[Prediction]


class OpWeight(BaseModel):
    name: str
    weight: float = Field(description="the enhancer's blend weight of this operation for this image")


class EnhancerOps(BaseModel):
    available: bool = Field(description="false when the served enhancer does not report its op weights")
    weights: list[OpWeight] = Field(default_factory=list, description="every operation, heaviest first")
    message: str | None = Field(default=None, description="why the weights are missing, when they are")


class PlaygroundTiming(BaseModel):
    decode_ms: float
    corrupt_ms: float
    inference_ms: float
    total_ms: float


class PlaygroundResponse(BaseModel):
    corruption: str | None = Field(description="the corruption applied; null: the upload was taken as it came")
    severity: int | None
    seed: int
    input_size: int
    enhancer: ModelRef
    images: PlaygroundImages
    recognizer: PathPredictions = Field(description="the recognizer alone on the corrupted image")
    enhanced: PathPredictions = Field(description="the recognizer on the enhanced image (enhancer + recognizer)")
    ops: EnhancerOps
    timing: PlaygroundTiming


class PlaygroundOptions(BaseModel):
    corruptions: dict[str, list[str]] = Field(description="corruption names by group (benchmark groups, then extra)")
    severities: list[int]
