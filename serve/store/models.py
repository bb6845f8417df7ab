"""Typed rows of the job store (no SQL here)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Final, Literal

#: "interrupted": only in stores of the in-process job manager before 98f7a90 (a job cut short by a restart)
JobState = Literal["queued", "running", "done", "failed", "interrupted"]
QUEUED: Final = "queued"
RUNNING: Final = "running"
DONE: Final = "done"
FAILED: Final = "failed"
ACTIVE = (QUEUED, RUNNING)
FINAL = (DONE, FAILED)


@dataclass
class JobParams:
    corruptions: list[str]
    severities: list[int]
    seed: int = 0
    table: str | None = None
    with_enhancer: bool = True
    #: the model's input size at submission (the built-in set is converted to it by the worker)
    image_size: int = 0
    #: the uploaded set's classes (empty for the built-in set)
    classes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobParams:
        return cls(**json.loads(text))


@dataclass
class Job:
    id: str
    status: JobState
    progress: float
    message: str
    created: str
    updated: str
    source: str
    num_images: int
    params: JobParams
    error: str | None = None
    #: fingerprint of the API key that created the job (serve.security.key_fingerprint); "" without keys
    owner: str = ""
    worker: str | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    attempts: int = 0
