"""The setup the enhancer benchmarks share (benchmarks/enhancer_runs.py): flags, resumption, results file."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.enhancer_runs import Budget, Comparison, parser_with_budget


def _start(tmp_path: Path, *argv: str) -> Comparison:
    args = parser_with_budget(None, str(tmp_path / "default-root")).parse_args(list(argv))
    return Comparison.start("benchmarks.example", args)


def test_start_reads_the_shared_flags_and_creates_the_root(tmp_path: Path) -> None:
    root = tmp_path / "runs" / "a"
    run = _start(
        tmp_path,
        "--train-subset",
        "64",
        "--epochs",
        "1",
        "--limit",
        "20",
        "--root",
        str(root),
        "--extra-fit-args",
        "--clean-weight",
        "0",
        "--blind",
    )
    assert root.is_dir() and run.root == root
    assert run.budget == Budget(train_subset=64, epochs=1, seed=0) and run.test_images == 20
    assert run.extra_fit_args == ("--clean-weight", "0", "--blind")  # everything after the flag, for every fit
    header = run.header()
    assert header["command"].startswith("python -m benchmarks.example")
    assert header["budget"] == {"train_subset": 64, "epochs": 1, "seed": 0}
    assert header["extra_fit_args"] == ["--clean-weight", "0", "--blind"] and header["test_images"] == 20
    assert len(header["load_average_at_start"]) == len(header["load_average_at_end"]) == 3


def test_a_finished_fit_is_reused_not_rerun(tmp_path: Path) -> None:
    run = _start(tmp_path, "--root", str(tmp_path))
    finished = tmp_path / "enhancer-done"
    finished.mkdir()
    (finished / "fit_seconds.txt").write_text("123.4\n")
    assert run.fit(finished, "--train-shifts", "geometric") == 123.4  # no training process started


def test_results_go_to_the_results_flag_only(tmp_path: Path) -> None:
    quiet = _start(tmp_path, "--root", str(tmp_path / "quiet"))
    quiet.write({"rows": []})
    assert not list((tmp_path / "quiet").iterdir())
    target = tmp_path / "out" / "results.json"
    run = _start(tmp_path, "--root", str(tmp_path / "loud"), "--results", str(target))
    run.write({**run.header(), "rows": [1, 2]})
    assert json.loads(target.read_text())["rows"] == [1, 2]
