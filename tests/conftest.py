"""Shared fixtures (real Fashion-MNIST data, a tiny recognizer trained by the real training command) and the
automatic ``triton`` / ``browser`` / ``slow`` markers: ``uv run pytest -m "not slow"`` is the inner loop."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from dyntta.data import LabelledImages, load_dataset

torch.set_num_threads(2)

# Markers follow from what a test uses, so a new test is marked without anyone remembering to:
# a fixture (direct or through other fixtures) or its module. Explicit @pytest.mark.slow works too.
TRITON_FIXTURES = {"triton", "make_gateway", "gateway", "gateway_repository"}  # the last: for `python -m serve`
TRITON_MODULES = {"test_triton.py", "test_faults.py", "test_replicas.py"}
BROWSER_FIXTURES = {"browser"}
BROWSER_MODULES = {"test_browser.py"}
SLOW_FIXTURES = {"tiny_recognizer_dir"}  # trains a model for the session
SLOW_DIRECTORIES = {"train", "export", "robust", "deploy"}  # training, ONNX export + parity, kubectl / docker
SLOW_MODULES = {"test_fidelity.py", "test_load.py", "test_fuzz.py", "test_evaluate_cli.py"}


def _is_slow_parameter(item: pytest.Item) -> bool:
    # the corruption suite at 224 px takes seconds per condition; 32 px covers the same code quickly
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("size") == 224


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        fixtures = set(getattr(item, "fixturenames", ()))
        triton = bool(fixtures & TRITON_FIXTURES) or path.name in TRITON_MODULES
        browser = bool(fixtures & BROWSER_FIXTURES) or path.name in BROWSER_MODULES
        if triton:
            item.add_marker(pytest.mark.triton)
        if browser:
            item.add_marker(pytest.mark.browser)
        if (
            triton
            or browser
            or fixtures & SLOW_FIXTURES
            or path.name in SLOW_MODULES
            or path.parent.name in SLOW_DIRECTORIES
            or _is_slow_parameter(item)
        ):
            item.add_marker(pytest.mark.slow)


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
