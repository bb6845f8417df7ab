"""The provenance header every benchmark's results file starts with (benchmarks/provenance.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks.provenance import Provenance

HEADER = ("command", "commit", "started", "seconds", "load_average_at_start", "load_average_at_end")


def test_the_header_says_how_when_and_under_what_load_the_figures_were_obtained() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    run = Provenance.start("benchmarks.example", ["--limit", "20", "--results", "out.json"])
    header = run.header()
    assert list(header) == list(HEADER)
    assert header["command"] == "python -m benchmarks.example --limit 20 --results out.json"
    assert header["commit"] is None or (isinstance(header["commit"], str) and header["commit"])
    started = datetime.fromisoformat(str(header["started"]))
    assert started.tzinfo is not None and before <= started <= datetime.now(UTC)
    assert isinstance(header["seconds"], float) and header["seconds"] >= 0
    for key in ("load_average_at_start", "load_average_at_end"):
        load = header[key]
        assert isinstance(load, list) and len(load) == 3 and all(isinstance(x, float) and x >= 0 for x in load)


def test_the_command_defaults_to_the_process_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["benchmarks/example.py", "--images", "5"])
    assert Provenance.start("benchmarks.example").command == "python -m benchmarks.example --images 5"
    assert Provenance.start("benchmarks.example", []).command == "python -m benchmarks.example"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_commit_is_the_working_tree_head_and_none_outside_a_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    monkeypatch.chdir(tmp_path)
    assert Provenance.start("benchmarks.example", []).commit is None
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    commit = Provenance.start("benchmarks.example", []).commit
    assert commit is not None and head.startswith(commit)


def test_the_commit_is_none_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    assert Provenance.start("benchmarks.example", []).commit is None


def test_write_puts_the_header_before_the_body_creates_folders_and_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Provenance.start("benchmarks.example", ["--results", "x"])
    target = tmp_path / "new" / "folder" / "results.json"
    body = {"rows": [{"arch": "a", "ratio": 1.05}], "target_met": True}
    returned = run.write(target, body)
    text = target.read_text()
    assert text.endswith("}\n")
    written = json.loads(text)
    assert written == returned and list(written) == [*HEADER, "rows", "target_met"]
    assert written["rows"] == body["rows"] and written["target_met"] is True
    assert json.loads(capsys.readouterr().out) == written  # printed: the same JSON


def test_no_path_prints_only_and_echo_false_is_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    run = Provenance.start("benchmarks.example", [])
    result = run.write(None, {"rows": []})
    assert json.loads(capsys.readouterr().out) == result and result["rows"] == []
    assert not list(tmp_path.iterdir())  # no file, not even in the working directory
    run.write(tmp_path / "quiet.json", {"rows": []}, echo=False)
    assert capsys.readouterr().out == "" and json.loads((tmp_path / "quiet.json").read_text())["rows"] == []


def test_a_body_may_not_overwrite_the_header(tmp_path: Path) -> None:
    run = Provenance.start("benchmarks.example", [])
    with pytest.raises(ValueError, match="seconds"):
        run.write(tmp_path / "results.json", {"seconds": 1.0})
    assert not (tmp_path / "results.json").exists()
