"""Typed rows of the job store (no SQL here)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
ACTIVE = (QUEUED, RUNNING)
FINAL = (DONE, FAILED)


def key_fingerprint(api_key: str | None) -> str:
    """What the store keeps to tell API keys apart: a SHA-256 prefix, never the key itself ('' = no key).
    The key is a high-entropy secret chosen by the operator, so an unsalted hash does not make it guessable."""
    if not api_key:
        return ""
    return hashlib.sha256(b"dyntta-api-key:" + api_key.encode()).hexdigest()[:32]


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
    status: str
    progress: float
    message: str
    created: str
    updated: str
    source: str
    num_images: int
    params: JobParams
    error: str | None = None
    owner: str = ""
    worker: str | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    attempts: int = 0
