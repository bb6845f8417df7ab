"""deploy/k8s and deploy/kserve: every kustomization renders, every object validates against the Kubernetes
OpenAPI schema of the pinned version (strict) or its CRD schema, and the objects fit together (selectors,
probes, security contexts, autoscaling, secrets)."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest
import yaml
from deploy_checks import (
    DEPLOY,
    EXTERNAL_SECRETS,
    KUSTOMIZATIONS,
    SCHEMAS,
    TRITON_NGC_IMAGE,
    ManifestError,
    by_kind,
    crd_validator,
    pod_templates,
    render,
    selects,
    validate,
)

SERVING = ("k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/overlays/trial", "kserve")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates(kustomization: str) -> None:
    objs = render(kustomization)
    assert objs
    failures = []
    for obj in objs:
        try:
            validate(obj)
        except ManifestError as error:
            failures.append(str(error))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_meet_the_restricted_pod_security_standard(kustomization: str) -> None:
    """The namespace enforces 'restricted'; also: read-only root filesystems, requests and limits, pinned images."""
    templates = list(pod_templates(render(kustomization)))
    assert templates
    for template in templates:
        pod = template.spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True and pod.get("runAsUser", 0) != 0, template.owner
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", template.owner
        assert template.spec.get("automountServiceAccountToken") is False, template.owner
        for container in template.containers:
            where = f"{template.owner}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources.get(kind, {}).keys(), f"{where}: {kind}"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: unpinned {image}"
            # with a read-only root, Python and Triton need a writable /tmp
            assert "/tmp" in template.writable_paths(container), f"{where}: no writable /tmp"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_references_resolve(kustomization: str) -> None:
    """Services, PDBs and HPAs find their pods; probes, Ingress and Services name existing ports; every
    ConfigMap, Secret and claim a pod uses is rendered too (or is one of the documented external Secrets)."""
    objs = render(kustomization)
    templates = list(pod_templates(objs))
    labels = [t.metadata.get("labels", {}) for t in templates]
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in by_kind(objs, kind).items():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            assert any(selects(selector, pod_labels) for pod_labels in labels), f"{kind} {name} selects no pod"
    for name, hpa in by_kind(objs, "HorizontalPodAutoscaler").items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in by_kind(objs, target["kind"]), f"HPA {name}: no {target}"
    services = by_kind(objs, "Service")
    for name, ingress in by_kind(objs, "Ingress").items():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, f"Ingress {name}: no Service {backend['name']}"
                assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    config_maps, secrets, claims = (
        by_kind(objs, "ConfigMap"),
        by_kind(objs, "Secret"),
        by_kind(objs, "PersistentVolumeClaim"),
    )
    for template in templates:
        for volume in template.spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, template.owner
        for container in template.containers:
            where = f"{template.owner}/{container['name']}"
            port_names = {p.get("name") for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or isinstance(port, int) or port in port_names, f"{where}: {probe} port {port}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, where
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, where
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets or ref["name"] in EXTERNAL_SECRETS, f"{where}: Secret {ref['name']}"
    for name, service in services.items():
        pods = [t for t in templates if selects(service["spec"]["selector"], t.metadata.get("labels", {}))]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert any(target in {p.get("name") for c in t.containers for p in c.get("ports", [])} for t in pods), (
                    f"Service {name}: no container port named {target}"
                )


@pytest.mark.parametrize("kustomization", SERVING)
def test_network_policies_admit_the_gateway_and_workers_only(kustomization: str) -> None:
    objs = render(kustomization)
    templates = list(pod_templates(objs))
    policies = by_kind(objs, "NetworkPolicy")
    assert ("dyntta-triton" in policies) != (kustomization == "kserve")
    for name, policy in policies.items():
        targets = [t for t in templates if selects(policy["spec"]["podSelector"]["matchLabels"], t.metadata["labels"])]
        assert targets, f"NetworkPolicy {name} selects no pod"
        port_names = {p["name"] for t in targets for c in t.containers for p in c.get("ports", [])}
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= port_names, name
            for peer in rule.get("from", []):
                owners = {
                    t.owner for t in templates if selects(peer["podSelector"]["matchLabels"], t.metadata["labels"])
                }
                assert owners and owners <= {"Deployment/dyntta-gateway", "Deployment/dyntta-worker"}, (name, owners)


def _container(objs: list, owner: str, name: str) -> dict:
    template = next(t for t in pod_templates(objs) if t.owner == owner)
    return template.container(name)


@pytest.mark.parametrize("kustomization", SERVING)
def test_gateway_two_replicas_with_health_probes(kustomization: str) -> None:
    objs = render(kustomization)
    assert by_kind(objs, "Deployment")["dyntta-gateway"]["spec"]["replicas"] == 2
    gateway = _container(objs, "Deployment/dyntta-gateway", "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"Service", "Ingress", "PodDisruptionBudget"} <= {
        o["kind"] for o in objs if o["metadata"]["name"] == "dyntta-gateway"
    }
    worker = _container(objs, "Deployment/dyntta-worker", "worker")
    assert worker["command"] == ["python", "-m", "serve.worker"]


@pytest.mark.parametrize("kustomization", ["k8s/overlays/cpu", "k8s/overlays/gpu"])
def test_triton_deployment(kustomization: str) -> None:
    objs = render(kustomization)
    triton = _container(objs, "Deployment/dyntta-triton", "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    service = by_kind(objs, "Service")["dyntta-triton"]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc", "metrics"}
    # the model repository arrives through an init container into a pod-local volume
    init = _container(objs, "Deployment/dyntta-triton", "model-repository")
    assert init["volumeMounts"][0]["mountPath"] == "/models"
    assert "--model-repository=/models" in triton["args"]
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["dyntta-triton"]
    metric = hpa["spec"]["metrics"][0]
    if kustomization.endswith("cpu"):
        assert triton["image"].startswith("ghcr.io/") and triton["command"] == ["python", "-m", "serve.triton"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
        assert init["args"][-2] == "/app/model_repository"
    else:
        assert triton["image"] == TRITON_NGC_IMAGE
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert metric["type"] == "Pods"
        assert init["args"][-2] == "/app/model_repository_gpu"


def test_gpu_hpa_metric_is_defined_by_the_prometheus_adapter_rule() -> None:
    config = yaml.safe_load((DEPLOY / "k8s/overlays/gpu/prometheus-adapter/config.yaml").read_text())
    errors = list(crd_validator("prometheus-adapter-config.json").iter_errors(config))
    assert not errors, [e.message for e in errors]
    names = {rule["name"]["as"] for rule in config["rules"]}
    hpa = by_kind(render("k8s/overlays/gpu"), "HorizontalPodAutoscaler")["dyntta-triton"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] in names
    # the rule reads Triton's own counters (docs/user_guide/metrics.md of the server)
    query = config["rules"][0]["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query


def test_trial_overlay_brings_its_database() -> None:
    objs = render("k8s/overlays/trial")
    assert by_kind(objs, "StatefulSet")["dyntta-postgres"]["spec"]["replicas"] == 1
    url = base64.b64decode(by_kind(objs, "Secret")["dyntta-state"]["data"]["url"]).decode()
    service = by_kind(objs, "Service")["dyntta-postgres"]
    assert url.startswith("postgresql://") and f"@dyntta-postgres:{service['spec']['ports'][0]['port']}/" in url
    # the cpu overlay alone expects the URL Secret from outside
    assert "dyntta-state" not in by_kind(render("k8s/overlays/cpu"), "Secret")


def test_kserve_replaces_the_triton_deployment() -> None:
    objs = render("kserve")
    assert "dyntta-triton" not in by_kind(objs, "Deployment")
    isvc = by_kind(objs, "InferenceService")["dyntta"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtimeVersion"] == TRITON_NGC_IMAGE.rsplit(":", 1)[1]
    assert model["protocolVersion"] == "v2" and model["storageUri"].startswith("pvc://dyntta-model-repository/")
    url = by_kind(objs, "ConfigMap")["dyntta-config"]["data"]["DYNTTA_TRITON_URL"]
    assert url.startswith(f"grpc://{isvc['metadata']['name']}-predictor.")
    assert any(p["containerPort"] == 9000 for p in model["ports"])  # the runtime's --grpc-port


# --- the checks fail on broken manifests -----------------------------------------------------------------


def _deployment(kustomization: str = "k8s/overlays/cpu") -> dict:
    return copy.deepcopy(by_kind(render(kustomization), "Deployment")["dyntta-gateway"])


def _rename_container_field(obj: dict) -> dict:
    container = obj["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy", "IfNotPresent")
    return obj


def _drop_selector(obj: dict) -> dict:
    del obj["spec"]["selector"]
    return obj


def _hpa_v2beta2(_: dict) -> dict:
    hpa = copy.deepcopy(by_kind(render("k8s/overlays/cpu"), "HorizontalPodAutoscaler")["dyntta-triton"])
    hpa["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
    return hpa


def _unknown_kind(_: dict) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}, "spec": {}}


def _isvc(mutate) -> dict:
    isvc = copy.deepcopy(by_kind(render("kserve"), "InferenceService")["dyntta"])
    mutate(isvc["spec"]["predictor"]["model"])
    return isvc


def _job(mutate) -> dict:
    job = copy.deepcopy(by_kind(render("k8s/training/pytorchjob"), "PyTorchJob")["dyntta-train"])
    mutate(job["spec"])
    return job


BROKEN = {
    "misspelled container field": lambda: _rename_container_field(_deployment()),
    "Deployment without selector": lambda: _drop_selector(_deployment()),
    "string where an integer belongs": lambda: {**_deployment(), "spec": {**_deployment()["spec"], "replicas": "two"}},
    "removed API autoscaling/v2beta2": lambda: _hpa_v2beta2({}),
    "kind without a schema": lambda: _unknown_kind({}),
    "InferenceService misspelled modelFormat": lambda: _isvc(lambda m: m.update(modelFormatt=m.pop("modelFormat"))),
    "InferenceService without modelFormat": lambda: _isvc(lambda m: m.pop("modelFormat")),
    "InferenceService storageUri not a string": lambda: _isvc(lambda m: m.update(storageUri=12)),
    "InferenceService bad protocol": lambda: _isvc(lambda m: m.update(protocolVersion="v3")),
    "InferenceService misspelled env field": lambda: _isvc(lambda m: m.update(env=[{"name": "A", "valeu": "1"}])),
    "PyTorchJob without replica specs": lambda: _job(lambda s: s.pop("pytorchReplicaSpecs")),
    "PyTorchJob unknown replica type": lambda: _job(lambda s: s["pytorchReplicaSpecs"].update(Chief={"replicas": 1})),
    "PyTorchJob misspelled pod field": lambda: _job(
        lambda s: s["pytorchReplicaSpecs"]["Worker"]["template"]["spec"].update(tolerration=[])
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_validation_rejects_broken_manifests(case: str) -> None:
    with pytest.raises(ManifestError):
        validate(BROKEN[case]())


def test_kustomize_failure_is_reported(tmp_path: Path) -> None:
    """A patch that targets nothing makes the render fail (and with it every test of that overlay)."""
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{DEPLOY / 'k8s/base'}]\n"
        "patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n"
        "      metadata: {name: dyntta-tritonn}\n      spec: {replicas: 3}\n"
    )
    with pytest.raises(ManifestError, match="kustomize"):
        render(tmp_path)


def test_crd_schemas_cite_their_source() -> None:
    for schema in SCHEMAS.glob("*.json"):
        comment = " ".join(yaml.safe_load(schema.read_text())["$comment"])
        assert "@ " in comment and (
            "kserve/kserve" in comment or "kubeflow" in comment or "prometheus-adapter" in comment
        )
