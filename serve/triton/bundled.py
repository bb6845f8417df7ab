"""Where the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel lives (2.51, python backend only)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from serve.triton.errors import TritonError


@dataclass(frozen=True)
class BundledTriton:
    """Paths of the tritonserver distribution inside the installed pytriton package."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, version: str | None = None) -> Path:
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_bundled_triton() -> BundledTriton:
    """Locate the tritonserver shipped in the ``nvidia-pytriton`` wheel (without importing pytriton, which
    pulls in its whole proxy stack)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the nvidia-pytriton package is not installed; it bundles the tritonserver binary")
    package = Path(next(iter(spec.submodule_search_locations)))
    bundled = BundledTriton(root=package / "tritonserver", libs=package.parent / "nvidia_pytriton.libs")
    if not bundled.binary.is_file():
        raise TritonError(f"no tritonserver binary at {bundled.binary}")
    if not bundled.stub().is_file():
        raise TritonError(
            f"the pytriton wheel has no python-backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} ({bundled.stub()})"
        )
    if not bundled.libs.is_dir():  # editable installs keep them beside the binary
        bundled = BundledTriton(root=bundled.root, libs=bundled.root / "external_libs")
    return bundled
