"""The GPU deployment examples (issue #17): deploy/compose.gpu.yml and deploy/k8s-gpu/.

Static, like test_deploy_static.py: the override names a real compose service, reserves an
NVIDIA device and sets real client settings with valid values; the kustomize overlay patches
a real client Job of deploy/k8s with an ``nvidia.com/gpu`` limit, and the patched Job still
matches the Kubernetes schema; the Dockerfile documents the CUDA build argument.
"""

from __future__ import annotations

import copy
import shutil
import subprocess

import pytest
import yaml
from test_deploy_static import (
    COMPOSE,
    DOCKERFILE,
    K8S,
    K8S_VERSIONS,
    REPO,
    check_env,
    interpolate,
)

GPU_COMPOSE = REPO / "deploy" / "compose.gpu.yml"
OVERLAY = REPO / "deploy" / "k8s-gpu"


def test_compose_gpu_override_reserves_a_gpu_for_a_real_client(monkeypatch):
    base = interpolate(yaml.safe_load(COMPOSE.read_text()))
    override = interpolate(yaml.safe_load(GPU_COMPOSE.read_text()))
    assert override["services"], "the override changes no service"
    for name, svc in override["services"].items():
        assert name in base["services"] and name.startswith("client-"), name
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert svc["build"]["args"]["TORCH_INDEX_URL"].startswith(
            "https://download.pytorch.org/whl/cu"
        )
        env = {**base["services"][name]["environment"], **svc["environment"]}
        settings = check_env(env, "MSMTREC_CLIENT_", monkeypatch, f"compose.gpu {name}")
        assert (settings.device, settings.precision) == ("cuda", "bf16")


def test_base_compose_exposes_the_device_settings(monkeypatch):
    base = interpolate(yaml.safe_load(COMPOSE.read_text()))
    client = check_env(
        base["services"]["client-nl"]["environment"], "MSMTREC_CLIENT_", monkeypatch, "client"
    )
    assert (client.device, client.precision) == ("auto", "fp32")
    gateway = check_env(
        base["services"]["gateway"]["environment"], "MSMTREC_GATEWAY_", monkeypatch, "gateway"
    )
    assert gateway.device == "cpu"


def _patched_jobs() -> list[dict]:
    """deploy/k8s's Jobs with the overlay's patches merged the way strategic merge does for
    these fields (containers and env entries by name, maps merged)."""
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../k8s"]
    base = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((K8S / "clients.yaml").read_text())
        if d
    }
    out = []
    for entry in kust["patches"]:
        patch = yaml.safe_load((OVERLAY / entry["path"]).read_text())
        key = (entry["target"]["kind"], entry["target"]["name"])
        assert key == (patch["kind"], patch["metadata"]["name"]) and key in base, key
        job = copy.deepcopy(base[key])
        pod, ppod = job["spec"]["template"]["spec"], patch["spec"]["template"]["spec"]
        for field in ("nodeSelector", "tolerations"):
            if field in ppod:
                pod[field] = ppod[field]
        for pc in ppod["containers"]:
            (c,) = [c for c in pod["containers"] if c["name"] == pc["name"]]
            env = {e["name"]: e for e in c["env"]}
            env.update({e["name"]: e for e in pc.get("env", [])})
            c["env"] = list(env.values())
            for part, values in pc.get("resources", {}).items():
                c["resources"].setdefault(part, {}).update(values)
        out.append(job)
    return out


def test_k8s_overlay_puts_a_real_client_on_a_gpu(monkeypatch):
    jobs = _patched_jobs()
    assert jobs
    for job in jobs:
        (client,) = [c for c in job["spec"]["template"]["spec"]["containers"]]
        assert client["resources"]["limits"]["nvidia.com/gpu"] == 1
        env = {e["name"]: e["value"] for e in client["env"]}
        settings = check_env(env, "MSMTREC_CLIENT_", monkeypatch, job["metadata"]["name"])
        assert settings.device == "cuda" and settings.precision == "bf16"
    images = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["images"]
    assert [i["name"] for i in images] == ["pf-msmtrec"] and "cuda" in images[0]["newTag"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_patched_job_matches_the_kubernetes_schema(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for job in _patched_jobs():
        kubernetes_validate.validate(job, version, strict=True)


def test_dockerfile_documents_the_cuda_build_argument():
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL=" in text
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu" in text  # the CUDA example


def test_kustomize_builds_the_gpu_overlay_when_kubectl_is_installed():
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed (the static checks above still ran)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    jobs = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Job"]
    gpus = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for j in jobs
        for c in j["spec"]["template"]["spec"]["containers"]
    ]
    assert gpus.count(1) == 1
