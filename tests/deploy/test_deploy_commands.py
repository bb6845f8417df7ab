"""The commands the manifests run exist: every flag and DYNTTA_* variable is one the program documents in its
``--help`` (gateway, worker, bundled Triton launcher, and the real tritonserver 2.51 binary = the NGC 24.10 image's
version), and the training commands parse with torchrun's and dyntta.train's own parsers."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_checks import DEPLOY, ROOT, Obj, by_kind, pod_templates, render

SERVING = ("k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/overlays/trial", "kserve")
TRAINING = ("k8s/training/pytorchjob", "k8s/training/indexed-job", "k8s/training/indexed-job-cpu")
FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")
ENV = re.compile(r"\bDYNTTA_[A-Z0-9_]+")


def _tritonserver() -> tuple[list[str], dict[str, str]]:
    """The tritonserver binary of the nvidia-pytriton wheel (2.51, the NGC 24.10-py3 version)."""
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    env = {**os.environ, "LD_LIBRARY_PATH": str(package.parent / "nvidia_pytriton.libs")}
    return [str(package / "tritonserver" / "bin" / "tritonserver"), "--help"], env


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """``--help`` of each program, run side by side."""
    commands = {
        name: ([sys.executable, "-m", name, "--help"], None) for name in ("serve", "serve.worker", "serve.triton")
    }
    commands["tritonserver"] = _tritonserver()
    running = {
        name: subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, (argv, env) in commands.items()
    }
    texts = {name: process.communicate(timeout=120)[0] for name, process in running.items()}
    for name, text in texts.items():
        assert "--" in text and len(text) > 200, f"{name} --help printed:\n{text[-1000:]}"
    return texts


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def _env_names(objs: list[Obj], container: Obj) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    config_maps = by_kind(objs, "ConfigMap")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(config_maps[source["configMapRef"]["name"]]["data"])
    return {n for n in names if n.startswith("DYNTTA_")}


def _container(objs: list[Obj], owner: str, name: str) -> Obj:
    return next(t for t in pod_templates(objs) if t.owner == owner).container(name)


@pytest.mark.parametrize("kustomization", SERVING)
def test_gateway_and_worker_settings_are_documented(helps: dict[str, str], kustomization: str) -> None:
    objs = render(kustomization)
    for owner, name, program in (
        ("Deployment/dyntta-gateway", "gateway", "serve"),
        ("Deployment/dyntta-worker", "worker", "serve.worker"),
    ):
        container = _container(objs, owner, name)
        assert container["command"] == ["python", "-m", program]
        assert _flags(container.get("args", [])) <= set(FLAG.findall(helps[program])), owner
        unknown = _env_names(objs, container) - set(ENV.findall(helps[program]))
        assert not unknown, f"{owner}: {program} does not know {sorted(unknown)}"


def test_triton_commands_are_documented(helps: dict[str, str]) -> None:
    cpu = _container(render("k8s/overlays/cpu"), "Deployment/dyntta-triton", "triton")
    assert cpu["command"] == ["python", "-m", "serve.triton"]
    assert _flags(cpu["args"]) <= set(FLAG.findall(helps["serve.triton"]))
    assert "--host=0.0.0.0" in cpu["args"]  # reachable from other pods, not loopback only
    gpu = _container(render("k8s/overlays/gpu"), "Deployment/dyntta-triton", "triton")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["triton"]["command"]
    kserve_args = by_kind(render("kserve"), "InferenceService")["dyntta"]["spec"]["predictor"]["model"]["args"]
    known = set(FLAG.findall(helps["tritonserver"]))
    for args in (gpu["args"], compose[1:], kserve_args):
        assert _flags(args) <= known, _flags(args) - known
    assert gpu["command"] == ["tritonserver"] and compose[0] == "tritonserver"


def test_compose_settings_are_documented(helps: dict[str, str]) -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for service, program in (("gateway", "serve"), ("worker", "serve.worker")):
        command = services[service]["command"]
        assert command[:3] == ["python", "-m", program]
        assert _flags(command[3:]) <= set(FLAG.findall(helps[program]))
        assert set(services[service]["environment"]) <= set(ENV.findall(helps[program])), service


def test_dockerfile_commands_parse(helps: dict[str, str]) -> None:
    from export.__main__ import build_parser

    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    export = next(line for line in text.splitlines() if "-m export" in line)
    build_parser().parse_args(export.split("-m export", 1)[1].split())  # exits (SystemExit) on a bad flag
    cmd = next(line for line in text.splitlines() if line.startswith("CMD "))
    assert _flags(yaml.safe_load(cmd[4:])) <= set(FLAG.findall(helps["serve"]))


# --- training --------------------------------------------------------------------------------------------


def _torchrun_args(args: list[str]) -> argparse.Namespace:
    from torch.distributed.run import get_args_parser

    # torchrun takes defaults from PET_* variables (what the Kubeflow operator sets): parse without them
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("PET_")}
    try:
        return get_args_parser().parse_args(args)
    finally:
        os.environ.update(saved)


def _train_args(argv: list[str]) -> argparse.Namespace:
    from dyntta.train import enhancer, recognizer

    # the parser of dyntta/train/__main__.py, built the same way
    parser = argparse.ArgumentParser(exit_on_error=False)
    commands = parser.add_subparsers(dest="command", required=True)
    recognizer.add_arguments(commands.add_parser("recognizer"))
    enhancer.add_arguments(commands.add_parser("enhancer"))
    return parser.parse_args(argv)


@pytest.mark.parametrize("kustomization", TRAINING)
def test_training_command_parses(kustomization: str) -> None:
    template = next(pod_templates(render(kustomization)))
    container = template.spec["containers"][0]
    assert container["command"] == ["torchrun"]
    run = _torchrun_args(container["args"])
    assert run.module and run.training_script == "dyntta.train"
    train = _train_args(run.training_script_args)
    assert train.command == "recognizer" and train.out.startswith("/checkpoints/")
    writable = template.writable_paths(container)
    assert "/checkpoints" in writable and "/dev/shm" in writable


@pytest.mark.parametrize("kustomization", ["k8s/training/indexed-job", "k8s/training/indexed-job-cpu"])
def test_indexed_job_rendezvous_is_consistent(kustomization: str) -> None:
    objs = render(kustomization)
    job = by_kind(objs, "Job")["dyntta-train"]
    service = by_kind(objs, "Service")[job["spec"]["template"]["spec"]["subdomain"]]
    assert service["spec"]["clusterIP"] == "None"
    run = _torchrun_args(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert run.rdzv_backend == "c10d" and run.max_restarts >= 1
    # one torchrun agent per pod, pod 0 hosts the c10d store: <job>-0.<service>:<port>
    assert int(run.nnodes) == job["spec"]["completions"] == job["spec"]["parallelism"]
    host, port = run.rdzv_endpoint.rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert job["spec"]["completionMode"] == "Indexed"


def test_pytorchjob_leaves_rendezvous_to_the_operator() -> None:
    job = by_kind(render("k8s/training/pytorchjob"), "PyTorchJob")["dyntta-train"]
    spec = job["spec"]
    assert spec["elasticPolicy"]["rdzvBackend"] == "c10d"
    workers = spec["pytorchReplicaSpecs"]["Worker"]
    assert spec["elasticPolicy"]["minReplicas"] <= workers["replicas"] <= spec["elasticPolicy"]["maxReplicas"]
    container = workers["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"  # the operator injects PET_* into this container only
    assert not {"--nnodes", "--rdzv-endpoint", "--rdzv-backend"} & {a.split("=")[0] for a in container["args"]}


def test_training_args_are_rejected_when_wrong() -> None:
    """The parsers used above do fail on a misspelled flag."""
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        _train_args(["recognizer", "--out=/x", "--epochz=3"])
    with pytest.raises(SystemExit):
        _torchrun_args(["--node-rnak=1", "-m", "dyntta.train"])


def _world_sizes(kustomization: str) -> list[int]:
    objs = render(kustomization)
    if "pytorchjob" in kustomization:
        spec = by_kind(objs, "PyTorchJob")["dyntta-train"]["spec"]
        nodes = range(spec["elasticPolicy"]["minReplicas"], spec["elasticPolicy"]["maxReplicas"] + 1)
        return [n * int(spec["nprocPerNode"]) for n in nodes]
    run = _torchrun_args(by_kind(objs, "Job")["dyntta-train"]["spec"]["template"]["spec"]["containers"][0]["args"])
    return [int(run.nnodes) * int(run.nproc_per_node)]


@pytest.mark.parametrize("kustomization", TRAINING)
def test_global_batch_divides_by_every_world_size(kustomization: str) -> None:
    """--batch-size is the global batch; the trainer refuses one that the world size does not divide."""
    from dyntta.train.loop import per_rank_batch

    template = next(pod_templates(render(kustomization)))
    train = _train_args(_torchrun_args(template.spec["containers"][0]["args"]).training_script_args)
    sizes = _world_sizes(kustomization)
    assert sizes and min(sizes) >= 2
    for world_size in sizes:
        per_rank_batch(train.batch_size, world_size)  # raises ValueError otherwise
    with pytest.raises(ValueError):
        per_rank_batch(train.batch_size + 1, 2)
