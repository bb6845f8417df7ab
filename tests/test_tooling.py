"""CI and the pre-commit hooks run the same static checks, before the tests, and the configuration holds."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STATIC = ["uv run ruff check", "uv run ruff format --check", "uv run mypy"]


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.startswith("uv run")]


def test_ci_runs_static_checks_before_the_tests() -> None:
    commands = _ci_commands()
    positions = [next(i for i, c in enumerate(commands) if c.startswith(check)) for check in STATIC]
    tests = next(i for i, c in enumerate(commands) if "pytest" in c)
    assert positions == sorted(positions) and max(positions) < tests


def test_pre_commit_runs_the_same_checks_offline() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]  # nothing to download
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert [next(e for e in entries if e.startswith(check)) for check in STATIC]
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_scripts_name_importable_mains() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dyntta-train", "dyntta-evaluate", "dyntta-export", "dyntta-serve", "dyntta-client"} <= set(scripts)
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert function == "main" and (ROOT / (module.replace(".", "/") + ".py")).is_file(), target


def test_pytest_markers_are_registered() -> None:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    names = {marker.split(":")[0] for marker in options["markers"]}
    assert names == {"triton", "browser", "slow"} and "--strict-markers" in options["addopts"]
