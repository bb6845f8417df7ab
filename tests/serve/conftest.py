"""Gateway fixtures: a real bundled Triton serving a freshly exported repository, and live gateways.

The recognizer is a linear probe fitted in closed form on real Fashion-MNIST pixels (about 80 % test
accuracy in under a second), so accuracy comparisons mean something without minutes of training; the
enhancer is a small per-image contrast stretch, so the ensemble really differs from the recognizer alone.
Both go through the export code (``export.build.export_repository``) and the launcher (``serve.triton``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from torch import nn

from dyntta.data import arrays_to_model_input
from dyntta.data.datasets import FASHION_MNIST_CLASSES
from export.build import ExportOptions, Source, export_repository, random_images
from serve.app import create_app
from serve.config import Settings
from serve.triton import TritonServer, free_port
from tests.serve.helpers import fmnist_raw, png_bytes
from tests.triton_helpers import running_triton

CLASSES = list(FASHION_MNIST_CLASSES)
SIZE = 32


class LinearProbe(nn.Module):
    """Logits = W . pixels + b over float [0, 1] NCHW: a recognizer with the project's image contract."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.linear(pixels.flatten(1))


class ContrastStretch(nn.Module):
    """Per-image contrast stretch around the image's own mean (no batch statistics: Triton batches)."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        return ((pixels - mean) * 1.3 + mean).clamp(0.0, 1.0)


def fit_probe(images: torch.Tensor, labels: np.ndarray, ridge: float = 20.0) -> LinearProbe:
    """Ridge regression of one-hot targets on pixels, solved exactly."""
    x = images.float().div(255.0).flatten(1).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = torch.nn.functional.one_hot(torch.from_numpy(labels), len(CLASSES)).double()
    gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    solution = torch.linalg.solve(gram, x.T @ y)  # (features + 1, classes)
    return LinearProbe(solution[:-1].T.float(), solution[-1].float()).eval()


@pytest.fixture(scope="session")
def probe() -> LinearProbe:
    raw, labels = fmnist_raw("train", 6000)
    return fit_probe(arrays_to_model_input(raw, SIZE), labels)


#: what the probe's checkpoint would record (served as its config's ``training`` parameter)
PROBE_RECIPE = {"method": "ridge-probe", "command": "fit_probe in tests/serve/conftest.py"}


@pytest.fixture(scope="session")
def gateway_repository(probe: LinearProbe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gateway") / "model_repository"
    export_repository(
        probe,
        CLASSES,
        SIZE,
        out,
        ExportOptions(recognizer_source=Source("probe", {"recipe": PROBE_RECIPE})),
        enhancer=ContrastStretch().eval(),
        parity_images=random_images(32, SIZE),
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def triton(gateway_repository: Path) -> Iterator[TritonServer]:
    yield from running_triton(gateway_repository, startup_timeout=180)


@dataclass
class LiveGateway:
    """The gateway app served by a real uvicorn in a background thread (the browser and load tests need a
    real socket; the app's lifespan runs exactly as under ``python -m serve``)."""

    app: Any
    port: int
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LiveGateway:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=5
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start (see the log above)")
            time.sleep(0.02)
        return self

    def request_stop(self) -> None:
        """Ask uvicorn to shut down (lifespan included) without waiting; ``stop`` waits."""
        if self.server is not None:
            self.server.should_exit = True

    def stop(self) -> None:
        self.request_stop()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)


GatewayFactory = Callable[..., LiveGateway]


@pytest.fixture(scope="session")
def make_gateway(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """Start a gateway on the session's Triton (or ``triton_grpc``) with settings overrides."""
    started: list[LiveGateway] = []

    def make(triton_grpc: str | list[str] | None = None, **overrides: Any) -> LiveGateway:
        overrides.setdefault("state_dir", tmp_path_factory.mktemp("state"))
        settings = Settings(**overrides)
        app = create_app(settings, triton_grpc or triton.urls.grpc_address)
        gateway = LiveGateway(app, free_port()).start()
        started.append(gateway)
        return gateway

    yield make
    # all at once: each shutdown mostly waits (graceful close, lifespan), and 30-odd one after another took
    # ~23 s at the end of the suite
    for gateway in started:
        gateway.request_stop()
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(make_gateway: GatewayFactory) -> LiveGateway:
    return make_gateway()


@pytest.fixture(scope="session")
def sample_png() -> bytes:
    raw, _ = fmnist_raw("test", 1)
    return png_bytes(raw[0])
