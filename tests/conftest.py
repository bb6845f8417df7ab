"""Shared fixtures: real Fashion-MNIST data and a tiny recognizer trained by the real training command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from dyntta.data import LabelledImages, load_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fmnist_test() -> LabelledImages:
    """The first 1,000 images of the real Fashion-MNIST test split at 32 px."""
    return load_dataset("fashion-mnist", "test").subset(torch.arange(1000))


@pytest.fixture(scope="session")
def tiny_recognizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of timm's ``test_resnet`` (0.37 M parameters) trained for 2 short epochs on 3,000
    Fashion-MNIST images with ``python -m dyntta.train recognizer``'s code path (well above chance)."""
    from dyntta.train import recognizer

    out = tmp_path_factory.mktemp("tiny_recognizer")
    parser = argparse.ArgumentParser()
    recognizer.add_arguments(parser)
    args = parser.parse_args(
        [
            "--arch",
            "test_resnet",
            "--epochs",
            "2",
            "--train-subset",
            "3000",
            "--val-fraction",
            "0.02",
            "--lr",
            "0.05",
            "--out",
            str(out),
        ]
    )
    recognizer.run(args)
    return out
