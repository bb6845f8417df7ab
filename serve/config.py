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
    "api_key": ("DYNTTA_API_KEY", "if set, POST endpoints require this value in the X-API-Key header"),
    "max_upload_mb": ("DYNTTA_MAX_UPLOAD_MB", "request body limit for image endpoints (MB)"),
    "max_zip_mb": ("DYNTTA_MAX_ZIP_MB", "request body limit for robustness uploads (MB)"),
    "max_zip_files": ("DYNTTA_MAX_ZIP_FILES", "most files an uploaded evaluation zip may hold"),
    "max_zip_uncompressed_mb": ("DYNTTA_MAX_ZIP_UNCOMPRESSED_MB", "most bytes an evaluation zip may inflate to"),
    "max_images": ("DYNTTA_MAX_IMAGES", "most images in one classify request"),
    "max_image_pixels": ("DYNTTA_MAX_IMAGE_PIXELS", "decoded images above this pixel count are refused (413)"),
    "max_inflight": ("DYNTTA_MAX_INFLIGHT", "requests inferring at once; more wait, then get 503"),
    "triton_timeout_s": ("DYNTTA_TRITON_TIMEOUT_S", "per-call Triton deadline; past it the request gets 504"),
    "max_queued_jobs": ("DYNTTA_MAX_QUEUED_JOBS", "robustness jobs waiting or running before 429"),
    "ensemble_model": ("DYNTTA_ENSEMBLE_MODEL", "Triton model: enhancer -> recognizer"),
    "recognizer_model": ("DYNTTA_RECOGNIZER_MODEL", "Triton model: recognizer alone (no enhancer)"),
    "enhancer_model": ("DYNTTA_ENHANCER_MODEL", "Triton model: enhancer alone"),
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_repository, self.state_dir = Path(self.model_repository), Path(self.state_dir)

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


def _convert(type_name: Any, raw: str) -> Any:
    # field types are strings here (postponed annotations)
    return {"int": int, "float": float, "Path": Path}.get(str(type_name), str)(raw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; the help names the environment variable that sets its default."""
    defaults = Settings()
    for f in fields(Settings):
        if f.name not in _ENV:
            continue
        var, help_text = _ENV[f.name]
        kind = {"int": int, "float": float, "Path": Path}.get(str(f.type), str)
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
