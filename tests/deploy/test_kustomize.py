"""Kustomize overlays render, and every object is valid against its schema.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields
fail); the Prometheus Operator kinds with the typed models of
cloudcoil-models-prometheus-operator (generated from the operator's CRDs), plus
a check that no field was dropped as unknown.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import yaml

from tests.deploy._util import DEPLOY, image_config, missing_tool, run, which

K8S_VERSIONS = ("1.30.0", "1.32.0")
OVERLAYS = ("cpu", "gpu")
LABEL = {"app.kubernetes.io/name": "darl", "app.kubernetes.io/component": "relevance-scoring"}


def _kustomize_cmd(path: Path) -> list[str]:
    if exe := which("kustomize"):
        return [exe, "build", str(path)]
    if exe := which("kubectl"):
        return [exe, "kustomize", str(path)]
    missing_tool("neither kustomize nor kubectl (kubectl kustomize) is installed")
    raise AssertionError  # unreachable


@functools.cache
def _render_cached(path: str) -> tuple[dict, ...]:
    res = run(_kustomize_cmd(Path(path)))
    assert res.returncode == 0, f"kustomize build {path} failed:\n{res.stderr}"
    return tuple(d for d in yaml.safe_load_all(res.stdout) if d)


def render(path: Path) -> list[dict]:
    return [yaml.safe_load(yaml.safe_dump(d)) for d in _render_cached(str(path))]  # fresh copies


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


@pytest.fixture(scope="module")
def with_queue_component(tmp_path_factory) -> list[dict]:
    """base + components/queue-autoscaling, as an overlay that enables it would render."""
    d = tmp_path_factory.mktemp("queue-overlay")
    (d / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY / "base", d)],
                "components": [os.path.relpath(DEPLOY / "components" / "queue-autoscaling", d)],
            }
        )
    )
    return render(d)


def _validate_builtin(doc: dict) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate is not installed")
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: "
                f"{e.message} at {list(e.path)}"
            ) from None


def _unknown_keys(given, dumped, path="") -> list[str]:
    """Keys present in the manifest but not in the model's dump (silently ignored fields)."""
    out = []
    if isinstance(given, dict):
        if not isinstance(dumped, dict):
            return [path or "."]
        for k, v in given.items():
            if k not in dumped:
                out.append(f"{path}.{k}")
            else:
                out += _unknown_keys(v, dumped[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(given, dumped, strict=False)):
            out += _unknown_keys(a, b, f"{path}[{i}]")
    return out


def _validate_crd(doc: dict) -> None:
    try:
        from cloudcoil.models.prometheus_operator import v1
    except ImportError:
        missing_tool("cloudcoil-models-prometheus-operator is not installed")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    model = getattr(v1, doc["kind"])
    obj = model.model_validate(doc)
    unknown = _unknown_keys(doc, obj.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    assert not unknown, f"{doc['kind']}: fields not in the CRD schema: {unknown}"


def _validate(docs: list[dict]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            _validate_crd(doc)
        else:
            _validate_builtin(doc)


def test_objects_are_schema_valid(overlay):
    _, docs = overlay
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
            "PrometheusRule",
        ]
    ), kinds
    _validate(docs)


def test_queue_autoscaling_component_is_valid(with_queue_component):
    _validate(with_queue_component)
    hpa = by_kind(with_queue_component, "HorizontalPodAutoscaler")
    types = [m["type"] for m in hpa["spec"]["metrics"]]
    assert types == ["Resource", "Pods"], types
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "darl_queue_depth_pairs"


def test_validation_catches_mistakes():
    """The validators are not vacuous: an unknown field and a wrong type both fail."""
    docs = render(DEPLOY / "overlays" / "cpu")
    dep = by_kind(docs, "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(AssertionError):
        _validate([dep])
    sm = by_kind(docs, "ServiceMonitor")
    sm["spec"]["endpoints"][0]["scrapeIntervall"] = "5s"
    with pytest.raises(AssertionError):
        _validate([sm])


def _container(docs: list[dict]) -> dict:
    (c,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_probes_and_graceful_shutdown(overlay):
    name, docs = overlay
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    c = _container(docs)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sp = c["startupProbe"]
    assert sp["httpGet"]["path"] == "/readyz"
    budget = sp["periodSeconds"] * sp["failureThreshold"]
    assert budget >= (1200 if name == "gpu" else 300), f"startup budget {budget}s is too short"
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    drain = float(_env(c)["DARL_SHUTDOWN_GRACE_S"])
    margin = pod["terminationGracePeriodSeconds"] - int(pre[1]) - drain
    assert margin >= 5, f"terminationGracePeriodSeconds leaves {margin}s after preStop + drain"
    # The image's default drain time is the one the manifest assumes.
    assert float(image_config(name).env["DARL_SHUTDOWN_GRACE_S"]) == drain


def test_container_matches_image(overlay):
    name, docs = overlay
    c = _container(docs)
    assert "command" not in c and "args" not in c, "the image's ENTRYPOINT is the command"
    assert c["image"].endswith(f"-{name}"), c["image"]
    assert c["ports"][0]["containerPort"] == int(image_config(name).env["DARL_PORT"])
    assert _env(c)["DARL_ENGINE"] == image_config(name).env["DARL_ENGINE"]
    assert _env(c)["DARL_HOST"] == "0.0.0.0"


def test_resources_and_security(overlay):
    name, docs = overlay
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    c = _container(docs)
    res = c["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"], key
    assert "memory" in res["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert {"/tmp", "/home/darl"} <= mounts
    if name == "gpu":
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
        assert pod["nodeSelector"] and pod["tolerations"]
        assert "/dev/shm" in mounts
        tp = int(_env(c)["DARL_VLLM_TENSOR_PARALLEL_SIZE"])
        assert tp == int(res["limits"]["nvidia.com/gpu"])
    else:
        assert "nvidia.com/gpu" not in res["limits"] and not pod.get("nodeSelector")


def test_selectors_connect_the_objects(overlay):
    _, docs = overlay
    dep = by_kind(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = by_kind(docs, "Service")
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector == LABEL
        assert selector.items() <= pod_labels.items()
    sm = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names
    assert all(e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    target = by_kind(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {by_kind(docs, "Namespace")["metadata"]["name"]}


def test_hpa_owns_replicas(overlay):
    name, docs = overlay
    assert "replicas" not in by_kind(docs, "Deployment")["spec"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2, "the PDB needs a second pod to allow a drain"
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] < hpa["minReplicas"]
    metrics = {m["type"]: m for m in hpa["metrics"]}
    if name == "gpu":
        assert set(metrics) == {"Pods"}, "CPU utilization says nothing about a GPU pod's load"
    else:
        assert metrics["Resource"]["resource"]["name"] == "cpu"


def test_prometheusrule_is_the_rules_file(overlay):
    _, docs = overlay
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert by_kind(docs, "PrometheusRule")["spec"]["groups"] == rules["groups"]
