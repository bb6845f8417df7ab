"""Fixtures for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dyntta.data import LabelledImages
from dyntta.models import create_recognizer, save_recognizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, fmnist_test: LabelledImages) -> Path:
    """An untrained timm ``test_efficientnet`` (0.1 M parameters, ImageNet stem) in the real checkpoint
    format: the CLI tests check plumbing, not accuracy, and training even a tiny model costs minutes on a
    busy 2-core machine."""
    torch.manual_seed(0)
    model = create_recognizer("test_efficientnet", fmnist_test.classes, input_size=32, small_input=False)
    return save_recognizer(model.eval(), tmp_path_factory.mktemp("tiny_checkpoint") / "tiny")
