"""Fast fixtures for the export tests: random-init tiny models (parity does not need trained weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyntta.models import Recognizer, create_recognizer

CLASSES = [f"class-{i}" for i in range(10)]


class ToyEnhancer(nn.Module):
    """A per-image enhancer with the project's contract: a small residual conv, clamped to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels + 0.2 * torch.tanh(self.conv(pixels))).clamp(0.0, 1.0)


class BlendingEnhancer(nn.Module):
    """The DynTTA enhancer's shape in miniature: per-image softmax weights over named operations
    (identity, brighten, invert), returned with ``forward(x, return_weights=True)``; served as OP_WEIGHTS."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)

    def op_names(self) -> list[str]:
        return ["identity", "brighten", "invert"]

    def forward(self, pixels: torch.Tensor, return_weights: bool = False):
        weights = torch.softmax(self.head(pixels.mean(dim=(2, 3))), dim=1)
        ops = torch.stack([pixels, (pixels + 0.2).clamp(0, 1), 1 - pixels], dim=1)
        enhanced = (weights[:, :, None, None, None] * ops).sum(dim=1)
        return (enhanced, weights) if return_weights else enhanced


class BatchStatisticsEnhancer(nn.Module):
    """Breaks notes rule 1: the output depends on the other images in the batch."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - pixels.mean() + 0.5).clamp(0.0, 1.0)


@pytest.fixture(scope="session")
def tiny_recognizer() -> Recognizer:
    torch.manual_seed(0)
    return create_recognizer("test_resnet", CLASSES).eval()


@pytest.fixture(scope="session")
def toy_enhancer() -> ToyEnhancer:
    torch.manual_seed(1)
    return ToyEnhancer().eval()


@pytest.fixture(scope="session")
def blending_enhancer() -> BlendingEnhancer:
    torch.manual_seed(2)
    return BlendingEnhancer().eval()


@pytest.fixture
def batch_dependent_enhancer() -> BatchStatisticsEnhancer:
    return BatchStatisticsEnhancer().eval()
