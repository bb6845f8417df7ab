"""Gateway settings: one dataclass, filled from flags with ``DYNTTA_*`` environment variables as defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MB = 1024 * 1024

#: flag name -> (environment variable, help). The environment only changes defaults; flags win.
_ENV = {
    "host": ("DYNTTA_HOST", "address the gateway binds (loopback by default: expose it deliberately)"),
    "port": ("DYNTTA_PORT", "gateway port"),
    "triton_url": (
        "DYNTTA_TRITON_URL",
        "use this running Triton, not the bundled one: grpc://host:port, host:port (also gRPC) or "
        "http://host:port (gRPC on port + 1); repeat the flag or separate with commas for several replicas; "
        "a name resolving to several addresses is one replica each",
    ),
    "model_repository": ("DYNTTA_MODEL_REPOSITORY", "Triton model repository for the bundled server"),
    "state_dir": ("DYNTTA_STATE_DIR", "where robustness jobs (SQLite) and reports are kept"),
    "api_key": (
        "DYNTTA_API_KEY",
        "if set, every /v1 route (and /metrics, /docs unless made public) requires it in the X-API-Key header "
        "or as Authorization: Bearer; several keys: comma-separated (jobs are visible to their key only)",
    ),
    "max_upload_mb": ("DYNTTA_MAX_UPLOAD_MB", "request body limit for image endpoints (MB)"),
    "max_zip_mb": ("DYNTTA_MAX_ZIP_MB", "request body limit for robustness uploads (MB)"),
    "max_zip_files": ("DYNTTA_MAX_ZIP_FILES", "most files an uploaded evaluation zip may hold"),
    "max_zip_uncompressed_mb": ("DYNTTA_MAX_ZIP_UNCOMPRESSED_MB", "most bytes an evaluation zip may inflate to"),
    "max_zip_pixels": ("DYNTTA_MAX_ZIP_PIXELS", "decoded pixels summed over an evaluation zip's images (413 above)"),
    "max_images": ("DYNTTA_MAX_IMAGES", "most images in one classify request"),
    "max_image_pixels": ("DYNTTA_MAX_IMAGE_PIXELS", "decoded images above this pixel count are refused (413)"),
    "max_inflight": ("DYNTTA_MAX_INFLIGHT", "requests inferring at once; more wait, then get 503"),
    "triton_timeout_s": ("DYNTTA_TRITON_TIMEOUT_S", "per-call Triton deadline; past it the request gets 504"),
    "max_queued_jobs": ("DYNTTA_MAX_QUEUED_JOBS", "robustness jobs waiting or running before 429"),
    "ensemble_model": ("DYNTTA_ENSEMBLE_MODEL", "Triton model: enhancer -> recognizer"),
    "recognizer_model": ("DYNTTA_RECOGNIZER_MODEL", "Triton model: recognizer alone (no enhancer)"),
    "enhancer_model": ("DYNTTA_ENHANCER_MODEL", "Triton model: enhancer alone"),
    # hardening: decode budget, backpressure, browser safety, logs (serve/security.py, admission.py, ...)
    "max_request_pixels": ("DYNTTA_MAX_REQUEST_PIXELS", "decoded pixels summed over one request's images (413 above)"),
    "decode_cpu_s": ("DYNTTA_DECODE_CPU_S", "CPU seconds one request's decoding may take (413 above)"),
    "decode_workers": ("DYNTTA_DECODE_WORKERS", "processes decoding uploads (anything but tiny ones)"),
    "max_waiting": ("DYNTTA_MAX_WAITING", "requests waiting for an inference slot; more get 503 at once"),
    "queue_wait_s": ("DYNTTA_QUEUE_WAIT_S", "longest wait for an inference slot before a 503"),
    "limit_concurrency": ("DYNTTA_LIMIT_CONCURRENCY", "connections + tasks uvicorn serves at once (503 above)"),
    "public_metrics": ("DYNTTA_PUBLIC_METRICS", "with an API key set, still serve /metrics without it (true/false)"),
    "public_docs": ("DYNTTA_PUBLIC_DOCS", "with an API key set, still serve /docs and /openapi.json without it"),
    "allowed_hosts": (
        "DYNTTA_ALLOWED_HOSTS",
        "Host names accepted when no API key is set, comma-separated, '*' for any (default: loopback names "
        "and --host; any when bound to 0.0.0.0)",
    ),
    "json_logs": ("DYNTTA_JSON_LOGS", "log one JSON object per line (true/false)"),
    # robustness jobs (serve/jobs.py, serve/worker.py)
    "state_url": (
        "DYNTTA_STATE_URL",
        "job store: sqlite:///path or postgresql://user@host/db, shared by gateways and workers "
        "(default: SQLite in the state directory)",
    ),
    "reports_dir": (
        "DYNTTA_REPORTS_DIR",
        "report directory shared by gateways and workers (default: <state dir>/reports)",
    ),
    "workers": ("DYNTTA_WORKERS", "job worker processes python -m serve starts (0: workers run elsewhere)"),
    "job_lease_s": ("DYNTTA_JOB_LEASE_S", "a job whose worker sent no heartbeat for this long is resumed by another"),
    "job_batch_size": ("DYNTTA_JOB_BATCH_SIZE", "images per Triton call in robustness jobs"),
    "keep_reports": ("DYNTTA_KEEP_REPORTS", "finished jobs kept, newest first (0: all)"),
    "report_max_age_days": ("DYNTTA_REPORT_MAX_AGE_DAYS", "finished jobs older than this are deleted (0: never)"),
}


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    triton_url: str | None = None
    model_repository: Path = Path("model_repository")
    state_dir: Path = Path("var")
    api_key: str | None = None
    max_upload_mb: float = 10.0
    max_zip_mb: float = 100.0
    max_zip_files: int = 20_000
    max_zip_uncompressed_mb: float = 500.0
    max_zip_pixels: int = 500_000_000
    max_images: int = 64
    max_image_pixels: int = 40_000_000
    max_inflight: int = 64
    triton_timeout_s: float = 30.0
    max_queued_jobs: int = 4
    ensemble_model: str = "dyntta"
    recognizer_model: str = "recognizer"
    enhancer_model: str = "enhancer"
    #: images per Triton call in robustness jobs (capped by the model's max_batch_size)
    job_batch_size: int = 64
    #: built-in evaluation set: the first N Fashion-MNIST test images at most
    builtin_max_images: int = 10_000
    max_request_pixels: int = 40_000_000
    decode_cpu_s: float = 1.0
    decode_workers: int = 2
    max_waiting: int = 64
    queue_wait_s: float = 10.0
    limit_concurrency: int = 512
    public_metrics: bool = False
    public_docs: bool = False
    allowed_hosts: str | None = None
    json_logs: bool = False
    state_url: str | None = None
    reports_dir: Path | None = None
    workers: int = 1
    job_lease_s: float = 30.0
    keep_reports: int = 1000
    report_max_age_days: float = 90.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_repository, self.state_dir = Path(self.model_repository), Path(self.state_dir)

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
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``DYNTTA_*`` variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, (var, _) in _ENV.items():
            if environ.get(var):
                values[name] = _convert(types[name], environ[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _bool(raw: str) -> bool:
    value = str(raw).strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")
    return value in ("1", "true", "yes", "on")


def _convert(type_name: Any, raw: str) -> Any:
    # field types are strings here (postponed annotations)
    return {"int": int, "float": float, "Path": Path, "bool": _bool}.get(str(type_name), str)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the help names the environment variable that sets its default."""
    defaults = Settings()
    for f in fields(Settings):
        if f.name not in _ENV:
            continue
        var, help_text = _ENV[f.name]
        kind = {"int": int, "float": float, "Path": Path, "bool": _bool}.get(str(f.type), str)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            type=kind,
            help=f"{help_text} (env {var}; default {getattr(defaults, f.name)})",
            **({"action": "append"} if f.name == "triton_url" else {}),  # repeatable: one per replica
        )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    values = {name: getattr(args, name, None) for name in _ENV}
    if isinstance(values.get("triton_url"), list):  # --triton-url given several times
        values["triton_url"] = ",".join(values["triton_url"])
    return Settings.from_env(environ, **values)
