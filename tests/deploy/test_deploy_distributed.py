"""The multi-replica client examples (issue #16): deploy/compose.distributed.yml and
deploy/k8s-distributed/.

Static, like test_deploy_static.py: the torchrun command lines are parsed by torchrun's own
parser and the part after ``-m msmtrec_app.cli`` by msmtrec's; every ``MSMTREC_*`` variable
is a real client setting with a valid value (and turns ``distributed`` on); the overlay's
patched Job, its headless Service and the claims are checked against the Kubernetes schema
and against each other (DNS name of rank 0, port, selector, ReadWriteMany claims).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess

import pytest
import yaml
from test_deploy_static import (  # noqa: F401  (secret_files: a fixture)
    COMPOSE,
    K8S,
    K8S_VERSIONS,
    REPO,
    check_env,
    compose_tool,
    interpolate,
    parse_command,
    secret_files,
)

from msmtrec_app.cli import build_parser

OVERRIDE = REPO / "deploy" / "compose.distributed.yml"
OVERLAY = REPO / "deploy" / "k8s-distributed"
TORCHRUN = ["python", "-m", "torch.distributed.run"]


def split_torchrun(argv: list[str]) -> tuple[object, list[str]]:
    """torchrun's parsed options and msmtrec's arguments (after ``-m msmtrec_app.cli``)."""
    from torch.distributed.run import get_args_parser

    options = get_args_parser().parse_args([str(a) for a in argv])
    assert options.module and options.training_script == "msmtrec_app.cli", argv
    return options, list(options.training_script_args)


def test_compose_override_runs_a_real_client_under_torchrun(monkeypatch):
    base = interpolate(yaml.safe_load(COMPOSE.read_text()))
    override = interpolate(yaml.safe_load(OVERRIDE.read_text()))
    assert override["services"], "the override changes no service"
    for name, svc in override["services"].items():
        assert name in base["services"] and name.startswith("client-"), name
        assert svc["entrypoint"] == TORCHRUN
        options, rest = split_torchrun(svc["command"])
        assert options.standalone and int(options.nproc_per_node) >= 2
        assert parse_command(build_parser(), rest).command == "client"
        env = {**base["services"][name]["environment"], **svc["environment"]}
        settings = check_env(env, "MSMTREC_CLIENT_", monkeypatch, f"compose.distributed {name}")
        assert settings.distributed and settings.replica_timeout_seconds > 0
        assert "/tmp" in svc["tmpfs"]  # torchrun writes there; the image's root is read-only


def test_compose_override_is_valid_for_the_compose_tool(secret_files, tmp_path):  # noqa: F811
    tool = compose_tool()
    if tool is None:
        pytest.skip("no compose tool installed (test_deploy_static says whether CI needs one)")
    secrets_dir = next(iter(secret_files.values())).parents[1]
    env = {**os.environ, "MSMTREC_SECRETS_DIR": str(secrets_dir)}
    result = subprocess.run(
        [*tool, "-f", str(COMPOSE), "-f", str(OVERRIDE), "config"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"{' '.join(tool)} config failed:\n{result.stderr}"
    nl = yaml.safe_load(result.stdout)["services"]["client-nl"]
    assert nl["entrypoint"] == TORCHRUN
    assert nl["environment"]["MSMTREC_CLIENT_DISTRIBUTED"] == "true"


def _base_docs() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for d in yaml.safe_load_all(path.read_text()):
                if d:
                    docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def overlay() -> dict[tuple[str, str], dict]:
    """deploy/k8s with the overlay applied the way strategic merge does for these fields
    (containers and env entries by name, ports by container port, maps merged)."""
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kust["resources"][0] == "../k8s"
    docs = _base_docs()
    for extra in kust["resources"][1:]:
        for d in yaml.safe_load_all((OVERLAY / extra).read_text()):
            docs[(d["kind"], d["metadata"]["name"])] = d
    for entry in kust["patches"]:
        patch = yaml.safe_load((OVERLAY / entry["path"]).read_text())
        key = (entry["target"]["kind"], entry["target"]["name"])
        assert key in docs and patch["kind"] == key[0], key
        doc = docs[key] = copy.deepcopy(docs[key])
        if key[0] == "PersistentVolumeClaim":
            doc["spec"].update(patch["spec"])
            continue
        pspec = dict(patch["spec"])
        ptemplate = pspec.pop("template")["spec"]
        doc["spec"].update(pspec)
        pod = doc["spec"]["template"]["spec"]
        for field, value in ptemplate.items():
            if field != "containers":
                pod[field] = value
        for pc in ptemplate["containers"]:
            (c,) = [c for c in pod["containers"] if c["name"] == pc["name"]]
            for field in ("command", "args"):
                if field in pc:
                    c[field] = pc[field]
            env = {e["name"]: e for e in c.get("env", [])}
            env.update({e["name"]: e for e in pc.get("env", [])})
            c["env"] = list(env.values())
            c["ports"] = c.get("ports", []) + pc.get("ports", [])
    return docs


def _distributed_jobs(docs: dict) -> list[dict]:
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    return [
        docs[("Job", p["target"]["name"])] for p in kust["patches"] if p["target"]["kind"] == "Job"
    ]


def test_k8s_overlay_makes_one_client_an_indexed_torchrun_job(monkeypatch):
    docs = overlay()
    jobs = _distributed_jobs(docs)
    assert jobs
    for job in jobs:
        name, spec = job["metadata"]["name"], job["spec"]
        pod = spec["template"]["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] >= 2
        (client,) = pod["containers"]
        assert client["command"] == TORCHRUN
        args = [a.replace("$(NODE_RANK)", "0") for a in client["args"]]
        options, rest = split_torchrun(args)
        assert int(options.nnodes) == spec["completions"] and int(options.nproc_per_node) == 1
        # rank 0 is pod 0 of this Job, by its DNS name under the headless Service
        subdomain = pod["subdomain"]
        assert options.master_addr == f"{name}-0.{subdomain}"
        service = docs[("Service", subdomain)]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        labels = spec["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        selected = [
            n for (k, n), d in docs.items()
            if k == "Job" and service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert selected == [name], selected  # the Service selects this client's pods only
        assert int(options.master_port) in {p["port"] for p in service["spec"]["ports"]}
        assert int(options.master_port) in {p["containerPort"] for p in client["ports"]}
        # the node rank is the pod's completion index
        env = {e["name"]: e for e in client["env"]}
        assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        assert "$(NODE_RANK)" in client["args"]
        assert parse_command(build_parser(), rest).command == "client"
        plain = {n: e["value"] for n, e in env.items() if "value" in e}
        settings = check_env(plain, "MSMTREC_CLIENT_", monkeypatch, name)
        assert settings.distributed
        # every pod mounts the scenario's claims: they must allow several nodes
        for volume in pod["volumes"]:
            claim = volume.get("persistentVolumeClaim")
            if claim:
                modes = docs[("PersistentVolumeClaim", claim["claimName"])]["spec"]["accessModes"]
                assert modes == ["ReadWriteMany"], (claim, modes)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_overlay_documents_match_the_kubernetes_schema(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = overlay()
    changed = [*_distributed_jobs(docs)]
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    changed += [docs[(p["target"]["kind"], p["target"]["name"])] for p in kust["patches"]]
    changed += [
        d for f in kust["resources"][1:] for d in yaml.safe_load_all((OVERLAY / f).read_text())
    ]
    for doc in changed:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_builds_the_distributed_overlay_when_kubectl_is_installed():
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed (the static checks above still ran)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    jobs = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Job"]
    assert [
        j["metadata"]["name"] for j in jobs if j["spec"].get("completionMode") == "Indexed"
    ] == ["msmtrec-client-nl"]
