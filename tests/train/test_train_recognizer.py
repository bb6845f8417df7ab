"""`python -m dyntta.train recognizer` end to end on a small subset."""

from __future__ import annotations

import subprocess
import sys

from dyntta.models import load_recognizer, read_checkpoint_meta
from dyntta.train.loop import evaluate_accuracy


def test_short_training_beats_chance(tiny_recognizer_dir, fmnist_test) -> None:
    meta = read_checkpoint_meta(tiny_recognizer_dir)
    assert meta["metrics"]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert meta["recipe"]["arch"] == "test_resnet" and meta["recipe"]["seed"] == 0
    assert len(meta["metrics"]["history"]) == 2
    # The recorded accuracy is that of the saved file.
    model = load_recognizer(tiny_recognizer_dir)
    assert evaluate_accuracy(model, fmnist_test, "cpu") > 0.5


def test_cli_reports_missing_data_clearly(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dyntta.train",
            "recognizer",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--data",
            "cifar10",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "cifar10" in result.stderr
    assert "Traceback" not in result.stderr
