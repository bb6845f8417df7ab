"""Gateway and worker settings: a pydantic-settings model read from ``DYNTTA_*`` environment variables, with
one command-line flag per documented setting (the environment sets defaults; flags win)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyntta.cli import UsageError

MB = 1024 * 1024
ENV_PREFIX = "DYNTTA_"


class Settings(BaseSettings):
    """Defaults, then ``DYNTTA_<FIELD>`` variables (empty ones are ignored), then keyword arguments. Every
    field with a description is also a flag of ``python -m serve`` and ``python -m serve.worker``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid")

    host: str = Field(
        "127.0.0.1", description="address the gateway binds (loopback by default: expose it deliberately)"
    )
    port: int = Field(8000, ge=0, le=65535, description="gateway port")
    triton_url: str | None = Field(
        None,
        description="use this running Triton, not the bundled one: grpc://host:port, host:port (also gRPC) or "
        "http://host:port (gRPC on port + 1); repeat the flag or separate with commas for several replicas; "
        "a name resolving to several addresses is one replica each",
    )
    model_repository: Path = Field(
        Path("model_repository"), description="Triton model repository for the bundled server"
    )
    state_dir: Path = Field(Path("var"), description="where robustness jobs (SQLite) and reports are kept")
    api_key: str | None = Field(
        None,
        description="if set, every /v1 route (and /metrics, /docs unless made public) requires it in the X-API-Key "
        "header or as Authorization: Bearer; several keys: comma-separated (jobs are visible to their key only)",
    )
    max_upload_mb: float = Field(10.0, ge=0, description="request body limit for image endpoints (MB)")
    max_zip_mb: float = Field(100.0, ge=0, description="request body limit for robustness uploads (MB)")
    max_zip_files: int = Field(20_000, ge=0, description="most files an uploaded evaluation zip may hold")
    max_zip_uncompressed_mb: float = Field(500.0, ge=0, description="most bytes an evaluation zip may inflate to")
    max_zip_pixels: int = Field(
        500_000_000, ge=0, description="decoded pixels summed over an evaluation zip's images (413 above)"
    )
    max_images: int = Field(64, ge=0, description="most images in one classify request")
    max_image_pixels: int = Field(
        40_000_000, ge=0, description="decoded images above this pixel count are refused (413)"
    )
    max_inflight: int = Field(64, ge=0, description="requests inferring at once; more wait, then get 503")
    triton_timeout_s: float = Field(30.0, ge=0, description="per-call Triton deadline; past it the request gets 504")
    max_queued_jobs: int = Field(4, ge=0, description="robustness jobs waiting or running before 429")
    ensemble_model: str = Field("dyntta", description="Triton model: enhancer -> recognizer")
    recognizer_model: str = Field("recognizer", description="Triton model: recognizer alone (no enhancer)")
    enhancer_model: str = Field("enhancer", description="Triton model: enhancer alone")
    #: built-in evaluation set: the first N Fashion-MNIST test images at most (tests lower it; no flag)
    builtin_max_images: int = Field(10_000, ge=0)
    # hardening: decode budget, backpressure, browser safety, logs (serve/security.py, admission.py, ...)
    max_request_pixels: int = Field(
        40_000_000, ge=0, description="decoded pixels summed over one request's images (413 above)"
    )
    decode_cpu_s: float = Field(
        1.0, ge=0, description="user CPU seconds one request's decoding may take (413 above; pixel limits bound memory)"
    )
    decode_workers: int = Field(2, ge=0, description="processes decoding uploads (anything but tiny ones)")
    max_waiting: int = Field(64, ge=0, description="requests waiting for an inference slot; more get 503 at once")
    queue_wait_s: float = Field(10.0, ge=0, description="longest wait for an inference slot before a 503")
    limit_concurrency: int = Field(512, ge=0, description="connections + tasks uvicorn serves at once (503 above)")
    public_metrics: bool = Field(False, description="with an API key set, still serve /metrics without it (true/false)")
    public_docs: bool = Field(False, description="with an API key set, still serve /docs and /openapi.json without it")
    allowed_hosts: str | None = Field(
        None,
        description="Host names accepted when no API key is set, comma-separated, '*' for any (default: loopback "
        "names and --host; any when bound to 0.0.0.0)",
    )
    json_logs: bool = Field(False, description="log one JSON object per line (true/false)")
    # robustness jobs (serve/jobs.py, serve/worker.py)
    state_url: str | None = Field(
        None,
        description="job store: sqlite:///path or postgresql://user@host/db, shared by gateways and workers "
        "(default: SQLite in the state directory)",
    )
    reports_dir: Path | None = Field(
        None, description="report directory shared by gateways and workers (default: <state dir>/reports)"
    )
    workers: int = Field(1, ge=0, description="job worker processes python -m serve starts (0: workers run elsewhere)")
    job_lease_s: float = Field(
        30.0, ge=0, description="a job whose worker sent no heartbeat for this long is resumed by another"
    )
    #: capped by the model's max_batch_size
    job_batch_size: int = Field(64, ge=1, description="images per Triton call in robustness jobs")
    keep_reports: int = Field(1000, ge=0, description="finished jobs kept, newest first (0: all)")
    report_max_age_days: float = Field(90.0, ge=0, description="finished jobs older than this are deleted (0: never)")

    @property
    def api_keys(self) -> list[str]:
        return [k.strip() for k in (self.api_key or "").split(",") if k.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_zip_bytes(self) -> int:
        return int(self.max_zip_mb * MB)

    @property
    def max_zip_uncompressed_bytes(self) -> int:
        return int(self.max_zip_uncompressed_mb * MB)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``DYNTTA_*`` variables, then ``overrides`` (None values are ignored)."""
        return cls(**{name: value for name, value in overrides.items() if value is not None})


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _flag_fields() -> Iterator[tuple[str, str]]:
    """(field, help text) of each setting that is also a flag."""
    for name, info in Settings.model_fields.items():
        if info.description is not None:
            yield name, info.description


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per documented setting; its help names the environment variable and the default. Values stay
    strings here: :func:`settings_from_args` validates flags and environment alike."""
    for name, help_text in _flag_fields():
        default = Settings.model_fields[name].default
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            action="append" if name == "triton_url" else "store",  # repeatable: one replica each
            help=f"{help_text} (env {env_name(name)}; default {default})",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The flags given (None: not given) over the environment. A bad value raises :class:`UsageError`
    (exit 2, no traceback) naming the flag or variable it came from."""
    given: dict[str, Any] = {name: getattr(args, name, None) for name, _ in _flag_fields()}
    if isinstance(given["triton_url"], list):  # --triton-url given several times
        given["triton_url"] = ",".join(given["triton_url"])
    try:
        return Settings.from_env(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            source = "--" + name.replace("_", "-") if given.get(name) is not None else env_name(name)
            problems.append(f"{source}={error['input']!r}: {error['msg']}")
        raise UsageError("; ".join(problems)) from None
