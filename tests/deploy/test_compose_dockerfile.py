"""deploy/compose.yaml against the Compose specification, deploy/Dockerfile and its ignore file against the
image contract (dependencies from uv.lock, non-root), yamllint over deploy/. Each check is also shown to fail on
a deliberately broken copy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    DEPLOY,
    ROOT,
    TRITON_NGC_IMAGE,
    dockerfile_problems,
    dockerignore_excludes,
    dockerignore_patterns,
    parse_dockerfile,
    render,
)
from yamllint import linter
from yamllint.config import YamlLintConfig

COMPOSE = DEPLOY / "compose.yaml"


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = _check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("      interval: 10s\n", "      intervall: 10s\n"),  # misspelled field
        ("    shm_size: 1gb\n", "    shm_size: [1gb]\n"),  # wrong type
        ("        condition: service_healthy\n", "        condition: healthy\n"),  # not an allowed value
    ],
)
def test_compose_check_rejects_broken_files(tmp_path: Path, old: str, new: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(old, new, 1))
    assert _check_compose(broken).returncode == 1


def test_compose_topology() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"triton", "gateway", "worker", "postgres", "model-repository"} <= services.keys()
    triton = services["triton"]
    assert triton["image"] == TRITON_NGC_IMAGE
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "models:/models:ro" in triton["volumes"]
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert str(service["user"]).split(":")[0] not in ("0", "root"), name
        assert service["cap_drop"] == ["ALL"], name
    for name in ("gateway", "worker"):
        environment = services[name]["environment"]
        assert environment["DYNTTA_TRITON_URL"] == "grpc://triton:8001"
        assert "@postgres:5432/" in environment["DYNTTA_STATE_URL"]
        assert f"reports:{environment['DYNTTA_STATE_DIR']}" in services[name]["volumes"]
        assert services[name]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["gateway"]["environment"]["DYNTTA_WORKERS"] == "0"
    assert services["triton"]["depends_on"]["model-repository"]["condition"] == "service_completed_successfully"


# --- Dockerfile --------------------------------------------------------------------------------------------

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_installs_from_the_lock_file_and_runs_as_non_root() -> None:
    assert dockerfile_problems(DOCKERFILE) == []
    final = [i for i in parse_dockerfile(DOCKERFILE) if i.stage == max(j.stage for j in parse_dockerfile(DOCKERFILE))]
    user = next(i.args for i in final if i.keyword == "USER").split(":")[0]
    # the uid the Kubernetes pods run as
    gateway = next(
        o for o in render("k8s/overlays/cpu") if o["metadata"]["name"] == "dyntta-gateway" and o["kind"] == "Deployment"
    )
    assert int(user) == gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    # read-only root filesystem: every cache a library may write lies under /tmp (a volume in every pod)
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    for variable in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME"):
        assert re.search(rf"\b{variable}=/tmp(/|\s|$)", env), variable
    expose = next(i.args for i in final if i.keyword == "EXPOSE")
    assert int(expose) == gateway["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("USER 10001:10001", "USER root", "root"),
        ("USER 10001:10001\n", "", "no USER"),
        ("uv sync --locked --no-dev --no-editable", "uv sync --no-dev --no-editable", "--locked"),
        ("RUN /app/.venv/bin/python -m export", "RUN pip install onnx && /app/.venv/bin/python -m export", "lock file"),
        ("FROM ghcr.io/astral-sh/uv:0.13.9 AS uv", "FROM ghcr.io/astral-sh/uv:latest AS uv", "unpinned"),
        ("COPY pyproject.toml uv.lock README.md ./", "COPY pyproject.toml README.md ./", "uv.lock"),
    ],
)
def test_dockerfile_check_rejects_broken_files(old: str, new: str, problem: str) -> None:
    assert old in DOCKERFILE
    problems = dockerfile_problems(DOCKERFILE.replace(old, new, 1))
    assert any(problem in p for p in problems), problems


def test_dockerignore_lets_in_only_the_sources() -> None:
    patterns = dockerignore_patterns((DEPLOY / "Dockerfile.dockerignore").read_text())
    sources = [
        path
        for i in parse_dockerfile(DOCKERFILE)
        if i.keyword == "COPY" and not i.args.startswith("--from")
        for path in i.args.split()[:-1]
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(patterns, source), f"{source} is copied but ignored"
    for unwanted in (".venv/bin/python", ".git/config", "var/jobs.sqlite", "runs/x", "tests/conftest.py",
                     "dyntta/__pycache__/a.pyc", "docs/RESULTS.md"):  # fmt: skip
        assert dockerignore_excludes(patterns, unwanted), unwanted
    assert dockerignore_excludes(["*"], "serve/app.py") and not dockerignore_excludes(["*", "!serve/"], "serve/app.py")


# --- yamllint ----------------------------------------------------------------------------------------------


def _lint(text: str, path: str = "x.yaml") -> list[str]:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    return [f"{p.line}:{p.column} {p.desc}" for p in linter.run(text, config, path)]


def test_yamllint_relaxed_over_deploy() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")]
    assert len(files) > 20
    problems = {str(p.relative_to(DEPLOY)): _lint(p.read_text(), str(p)) for p in files}
    assert not {k: v for k, v in problems.items() if v}


def test_yamllint_catches_duplicate_keys() -> None:
    assert _lint("a: 1\nb: 2\n") == []
    assert _lint("a: 1\na: 2\n")
