"""deploy/k8s renders offline and every object is valid: Kubernetes 1.32's
schemas (strict: no unknown field), KEDA's ScaledObject CRD, and Headrace's
own settings for what each container is given."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from headrace.runtime.config import load_settings
from headrace.runtime.service_certs import Role

ROOT = Path(__file__).resolve().parents[3] / "deploy" / "k8s"
KUBERNETES = "1.32"
# What the Secrets hold (deploy/k8s/README.md), as a pod would see it.
SECRET_VALUES = {
    ("headrace-redis", "url"): "redis://:secret@redis:6379/0",
    ("headrace-api-keys", "acme"): '["' + "a" * 64 + '"]',
}


def render(name: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/k8s; install it"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / name)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (config_map,) = by_kind(docs, "ConfigMap").values()
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"]["headrace.yaml"])
    return loaded


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }


@pytest.mark.parametrize("name", ["base", "overlays/gpu"])
def test_every_object_validates_against_the_kubernetes_schemas(name: str) -> None:
    docs = render(name)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_bites() -> None:
    deployment = copy.deepcopy(by_kind(render("base"), "Deployment")["router"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    deployment = copy.deepcopy(by_kind(render("base"), "Deployment")["router"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("name", ["base", "overlays/gpu"])
def test_the_scaled_object_is_valid_keda_and_follows_the_autoscaler(name: str) -> None:
    docs = render(name)
    raw = by_kind(docs, "ScaledObject")["worker-smollm2"]
    model = ScaledObject.model_validate(raw)
    # No field KEDA's CRD does not know (the models ignore extras: compare).
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == raw
    target = raw["spec"]["scaleTargetRef"]
    assert target["kind"] == "StatefulSet" and target["name"] in by_kind(docs, "StatefulSet")
    (trigger,) = raw["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["threshold"] == "1"
    assert 'headrace_scheduler_desired_workers{pool="smollm2"}' in trigger["metadata"]["query"]
    scaling = config_of(docs)["scheduler"]["pools"]["smollm2"]["autoscale"]
    assert scaling["enabled"]
    assert (raw["spec"]["minReplicaCount"], raw["spec"]["maxReplicaCount"]) == (
        scaling["min_workers"],
        scaling["max_workers"],
    )


@pytest.mark.parametrize("name", ["base", "overlays/gpu"])
def test_each_container_gets_a_configuration_headrace_accepts(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(name)
    (tmp_path / "headrace.yaml").write_text(yaml.safe_dump(config_of(docs)))
    for workload, spec in pod_specs(docs).items():
        for container in spec["containers"]:
            if container["image"].startswith("redis"):
                continue
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            with monkeypatch.context() as env:
                for item in container.get("env", []):
                    if item["name"] == "HEADRACE_CONFIG":
                        # Where the ConfigMap is mounted; here, a copy of it.
                        assert item["value"] == mounts["config"]
                        continue
                    if "value" in item:
                        value = item["value"].replace("$(POD_NAME)", f"{workload}-0")
                    elif "secretKeyRef" in item["valueFrom"]:
                        ref = item["valueFrom"]["secretKeyRef"]
                        value = SECRET_VALUES[(ref["name"], ref["key"])]
                    else:
                        value = "0"
                    env.setenv(item["name"], value)
                env.setenv("HEADRACE_CONFIG", str(tmp_path / "headrace.yaml"))
                settings = load_settings()
            # Keys configured everywhere (so no service runs in open dev mode)
            # and service identity from the mounted Secret.
            assert settings.tenants["acme"].api_key_sha256, (workload, container["name"])
            assert str(settings.internal_tls.certs_dir) == "/etc/headrace/certs"
            assert mounts["certs"] == "/etc/headrace/certs"


@pytest.mark.parametrize("name", ["base", "overlays/gpu"])
def test_names_agree_across_objects(name: str) -> None:
    docs = render(name)
    config = config_of(docs)
    statefulsets = by_kind(docs, "StatefulSet")
    services = by_kind(docs, "Service")
    # The scheduler replicas the config lists are the StatefulSet's pods.
    scheduler = statefulsets["scheduler"]
    assert config["scheduler"]["addresses"] == [
        f"scheduler-{i}.scheduler:50053" for i in range(scheduler["spec"]["replicas"])
    ]
    assert services["scheduler"]["spec"]["clusterIP"] == "None"
    # Each pool has a worker StatefulSet whose headless Service it registers by.
    for pool in config["pools"]:
        worker = statefulsets[f"worker-{pool}"]
        assert worker["spec"]["serviceName"] == f"worker-{pool}" and services[f"worker-{pool}"]
        env = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["HEADRACE_WORKER__ADVERTISE_HOST"] == f"$(POD_NAME).worker-{pool}"
        args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:2] == ["--pool", pool]
    # Certificates mounted are files `headrace certs init` writes, of real roles.
    roles = {role.value for role in Role}
    for spec in pod_specs(docs).values():
        for volume in spec.get("volumes", []):
            for item in volume.get("secret", {}).get("items", []):
                stem, _, suffix = item["key"].partition(".")
                assert item["key"] == "ca.crt" or (stem in roles and suffix in ("crt", "key")), item
    # Every PodDisruptionBudget selects a workload that exists.
    names = set(pod_specs(docs))
    for budget in by_kind(docs, "PodDisruptionBudget").values():
        assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] in names


def test_the_gpu_overlay_asks_for_gpus_only_for_its_pool() -> None:
    specs = pod_specs(render("overlays/gpu"))
    for workload, spec in specs.items():
        wants_gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in spec["containers"])
        assert wants_gpu == (workload == "worker-smollm2"), workload
    assert spec_image(specs["worker-smollm2"]) == "headrace-gpu:dev"
    assert spec_image(specs["router"]) == "headrace:dev"


def spec_image(spec: dict[str, Any]) -> str:
    return str(spec["containers"][0]["image"])
