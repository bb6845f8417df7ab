"""Offline checks of the deployment artefacts in ``deploy/``: render with kustomize, validate each object.

* Kubernetes objects: ``kubernetes_validate`` (the Kubernetes OpenAPI schemas of :data:`K8S_VERSION`, strict:
  unknown fields are errors). A kind it has no schema for (a CRD, or an API removed in that version) raises
  :class:`SchemaNotFoundError` there, which the command-line tool would only WARN about: here it is a failure,
  unless the kind is one of :data:`CRD_SCHEMAS`.
* CRD kinds (KServe InferenceService, Kubeflow PyTorchJob): the minimal JSON schemas in ``schemas/`` (derived
  from the official definitions, see the ``$comment`` in each), with Kubernetes core types (containers,
  pod templates, tolerations...) resolved against the same strict Kubernetes schemas.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, schema_contents
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
#: the Kubernetes version the manifests are validated against (kubectl here is 1.32 with kustomize 5.5)
K8S_VERSION = "1.32"
#: every kustomization a user applies, relative to deploy/
KUSTOMIZATIONS = (
    "k8s/overlays/cpu",
    "k8s/overlays/gpu",
    "k8s/overlays/trial",
    "kserve",
    "k8s/training/pytorchjob",
    "k8s/training/indexed-job",
    "k8s/training/indexed-job-cpu",
)
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob-v1.json",
}
#: Secrets the operator creates outside the repository (docs/DEPLOY.md); every other reference must resolve
EXTERNAL_SECRETS = {"dyntta-state", "dyntta-api-key", "dyntta-triton-admin"}
TRITON_NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"

Obj = dict[str, Any]


class ManifestError(AssertionError):
    """A rendered object that does not validate."""


def render(kustomization: str | Path) -> list[Obj]:
    """``kubectl kustomize`` a directory (relative to deploy/ or absolute) into its objects."""
    return [dict(o) for o in _render_cached(str(DEPLOY / kustomization))]


@functools.cache
def _render_cached(directory: str) -> tuple[Obj, ...]:
    try:
        out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:
        # Debian's kubernetes-client is 1.20 (kustomize 2, cannot build these); the tests need kubectl >= 1.27
        raise ManifestError(
            "kubectl not found: install kubectl >= 1.27 (kustomize 5), e.g. from pkgs.k8s.io"
        ) from error
    if out.returncode != 0:
        raise ManifestError(f"kubectl kustomize {directory} failed:\n{out.stderr[-2000:]}")
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


def _k8s_definitions() -> Resource:
    version = next(v for v in reversed(kubernetes_validate.utils.all_versions()) if v.startswith(K8S_VERSION + "."))
    return Resource.from_contents(
        schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    )


@functools.cache
def crd_validator(schema_file: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    registry = _k8s_definitions() @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: Obj) -> None:
    """Raise :class:`ManifestError` unless ``obj`` validates against its (strict) schema."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    name = f"{key[1]} {obj.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        errors = sorted(crd_validator(CRD_SCHEMAS[key]).iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            raise ManifestError(f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors))
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except SchemaNotFoundError as error:  # the CLI's mere WARN: an unknown kind or a removed API
        raise ManifestError(f"{name}: {error.message}") from error
    except kubernetes_validate.ValidationError as error:
        raise ManifestError(f"{name}: {list(error.absolute_path)}: {error.message}") from error


# --- pod templates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodTemplate:
    owner: str  # "Kind/name[/replica]"
    metadata: Obj
    spec: Obj
    claim_templates: tuple[str, ...] = ()  # a StatefulSet's volumeClaimTemplates

    @property
    def containers(self) -> list[Obj]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]

    def container(self, name: str) -> Obj:
        return next(c for c in self.containers if c["name"] == name)

    def writable_paths(self, container: Obj) -> list[str]:
        """Mount paths of the container backed by writable volumes (emptyDir, a claim), not mounted read-only."""
        writable = {
            v["name"]
            for v in self.spec.get("volumes", [])
            if {"emptyDir", "persistentVolumeClaim", "ephemeral"} & v.keys()
        } | set(self.claim_templates)
        return [
            m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in writable and not m.get("readOnly")
        ]


def pod_templates(objs: list[Obj]) -> Iterator[PodTemplate]:
    for obj in objs:
        kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            claims = tuple(c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", []))
            yield PodTemplate(f"{kind}/{name}", spec["template"].get("metadata", {}), spec["template"]["spec"], claims)
        elif kind == "PyTorchJob":
            for replica, replica_spec in spec["pytorchReplicaSpecs"].items():
                template = replica_spec["template"]
                yield PodTemplate(f"{kind}/{name}/{replica}", template.get("metadata", {}), template["spec"])


def by_kind(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- Dockerfile -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined."""
    logical, parts = [], []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        parts.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            logical.append(" ".join(parts))
            parts = []
    instructions, stage = [], -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        stage += keyword.upper() == "FROM"
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def dockerfile_problems(text: str) -> list[str]:
    """What breaks the image contract: installs not from uv.lock, root at run time, unpinned base images."""
    instructions = parse_dockerfile(text)
    problems = []
    last = max(i.stage for i in instructions)
    args = {k: v for i in instructions if i.keyword == "ARG" and "=" in i.args for k, v in [i.args.split("=", 1)]}
    for i in instructions:
        if i.keyword == "FROM":
            image = i.args.split()[0]
            image = args.get(image.strip("${}"), image)
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"unpinned base image {image}")
        if i.keyword == "RUN" and re.search(r"\bpip3? install\b|\buv pip install\b", i.args):
            problems.append(f"installs outside the lock file: {i.args}")
        if i.keyword == "RUN" and re.search(r"\buv sync\b", i.args):
            flags = set(i.args.split())
            if not {"--locked", "--no-dev"} <= flags:
                problems.append(f"uv sync without --locked --no-dev: {i.args}")
    syncs = [n for n, i in enumerate(instructions) if i.keyword == "RUN" and "uv sync" in i.args]
    lock = [n for n, i in enumerate(instructions) if i.keyword == "COPY" and "uv.lock" in i.args.split()]
    if not syncs or not lock or lock[0] > syncs[0]:
        problems.append("uv.lock is not copied before the first uv sync")
    users = [i.args for i in instructions if i.keyword == "USER" and i.stage == last]
    if not users:
        problems.append("the final stage runs as root (no USER)")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0") or not user.isdigit():
            problems.append(f"the final stage's USER {users[-1]} is root or not numeric (runAsNonRoot needs a uid)")
    return problems


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches a path (or one of its parents) decides; ``!`` re-includes."""
    excluded = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in patterns:
        negate, pattern = raw.startswith("!"), raw.lstrip("!").strip("/")
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/")) for p in prefixes
        ):
            excluded = not negate
    return excluded


def dockerignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
