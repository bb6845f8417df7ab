"""`python -m dyntta.train recognizer` end to end on a small subset."""

from __future__ import annotations

from dyntta.models import load_recognizer, read_checkpoint_meta
from dyntta.train.__main__ import main
from dyntta.train.loop import evaluate_accuracy


def test_short_training_beats_chance(tiny_recognizer_dir, fmnist_test) -> None:
    meta = read_checkpoint_meta(tiny_recognizer_dir)
    assert meta["metrics"]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert meta["recipe"]["arch"] == "test_resnet" and meta["recipe"]["seed"] == 0
    assert len(meta["metrics"]["history"]) == 2
    # The recorded accuracy is that of the saved file.
    model = load_recognizer(tiny_recognizer_dir)
    assert evaluate_accuracy(model, fmnist_test, "cpu") > 0.5


def test_cli_reports_missing_data_clearly(tmp_path, capsys) -> None:
    """What `python -m dyntta.train` runs, in this process: exit code 2 and a one-line error naming the data
    set (an exception escaping main() would be the traceback a user must not see, and fails the test)."""
    argv = ["recognizer", "--epochs", "1", "--out", str(tmp_path / "o"), "--data", "cifar10"]
    assert main([*argv, "--data-dir", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert "error:" in stderr and "cifar10" in stderr
