"""Every deploy manifest, validated offline: the Kubernetes objects against the Kubernetes
OpenAPI schemas (the `kubernetes-validate` package ships them), the kustomizations rendered the
way kustomize applies what they use, and the KServe InferenceService by its pod part against the
Pod schema plus the predictor fields KServe's CRD defines (that CRD's schema is not vendored).

    .venv/bin/pytest tests/test_deploy_manifests.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
VERSION = "1.31.0"  # a Kubernetes release every maintained cluster serves these APIs on
IMAGE_UID = 1034    # BentoML's bentoml user in the image (bentoml containerize's default)


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(folder: Path) -> list[dict]:
    """kustomize build, for what our kustomizations use: resources (files or a base folder),
    labels, images and strategic-merge patches of one Deployment."""
    kust = load(folder / "kustomization.yaml")[0]
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (folder / res).resolve()
        docs += render(path) if path.is_dir() else load(path)
    for patch in kust.get("patches", []):
        patch_doc = load(folder / patch["path"])[0]
        target = next(d for d in docs if (d["kind"], d["metadata"]["name"]) ==
                      (patch_doc["kind"], patch_doc["metadata"]["name"]))
        merge(target, patch_doc)
    for group in kust.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
    for image in kust.get("images", []):
        for d in docs:
            for c in pod_spec(d).get("containers", []) if d["kind"] == "Deployment" else []:
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return docs


def merge(base: dict, patch: dict) -> None:
    """Strategic merge: maps recursively, lists of named items (containers, env) by name."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif (isinstance(value, list) and isinstance(base.get(key), list)
              and all(isinstance(v, dict) and "name" in v for v in value + base[key])):
            named = {item["name"]: item for item in base[key]}
            for item in value:
                if item["name"] in named:
                    merge(named[item["name"]], item)
                else:
                    base[key].append(item)
        else:
            base[key] = copy.deepcopy(value)


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def env(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)  # raises on any error


VARIANTS = {"cpu": K8S, "gpu": K8S / "gpu"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_pass_the_kubernetes_schemas(variant):
    docs = render(VARIANTS[variant])
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                        "PodDisruptionBudget"}
    for doc in docs:
        validate(doc)


def test_a_broken_manifest_is_caught():
    deployment = next(d for d in render(K8S) if d["kind"] == "Deployment")
    pod_spec(deployment)["containers"][0]["readinessProbe"]["httpGet"]["port"] = [3000]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.parametrize("variant", VARIANTS)
def test_deployment_stops_gracefully_and_safely(variant):
    deployment = next(d for d in render(VARIANTS[variant]) if d["kind"] == "Deployment")
    spec = pod_spec(deployment)
    (c,) = spec["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert c["image"] == f"cifar2:{variant}" and c["ports"][0]["containerPort"] == 3000
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"),
                        ("livenessProbe", "/livez")):
        assert c[probe]["httpGet"]["path"] == path
    # preStop sleep, then the drain, then the requests in flight: inside the grace period.
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = int(env(c)["CIFAR2_DRAIN_S"])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 60  # 60 s: request timeout
    sc, pod_sc = c["securityContext"], spec["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod_sc["runAsNonRoot"] and pod_sc["runAsUser"] == IMAGE_UID
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    # What a read-only root needs: BentoML's home and the uploads under the writable /tmp.
    assert env(c)["BENTOML_HOME"].startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    limits = c["resources"]["limits"]
    if variant == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and env(c)["CIFAR2_DEVICE"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits and env(c)["CIFAR2_DEVICE"] == "cpu"


def test_service_hpa_and_pdb_point_at_the_deployment():
    docs = {d["kind"]: d for d in render(K8S)}
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = docs[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_kserve_inference_service():
    (isvc,) = load(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    # The predictor is a PodSpec inline plus KServe's component fields (from the CRD).
    kserve_fields = {"minReplicas": int, "maxReplicas": int, "scaleTarget": int,
                     "scaleMetric": str}
    for field, kind in kserve_fields.items():
        assert isinstance(predictor[field], kind), field
    assert predictor["scaleMetric"] in ("cpu", "memory", "concurrency", "rps")
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    pod = {k: v for k, v in predictor.items() if k not in kserve_fields}
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod})
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container"  # the name KServe gives its predictor container
    assert env(c)["PROTOCOL"] == "v2" and c["ports"] == [{"containerPort": 3000,
                                                          "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["readOnlyRootFilesystem"]
    assert env(c)["BENTOML_HOME"].startswith("/tmp/")


def test_the_two_bentofiles_differ_only_in_onnxruntime():
    gpu = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    cpu = yaml.safe_load((ROOT / "bentofile.cpu.yaml").read_text())
    assert (gpu["name"], cpu["name"]) == ("cifar2", "cifar2-cpu")
    packages = {k: [p for p in b["python"]["packages"] if "onnxruntime" in p]
                for k, b in (("gpu", gpu), ("cpu", cpu))}
    assert packages["cpu"] == ["onnxruntime>=1.20"]
    assert any(p.startswith("onnxruntime-gpu[cuda,cudnn]") for p in packages["gpu"])
    for b in (gpu, cpu):
        b.pop("name")
        b["python"]["packages"] = [p for p in b["python"]["packages"] if "onnxruntime" not in p]
    assert gpu == cpu
    assert (ROOT / cpu["docker"]["dockerfile_template"]).is_file()
