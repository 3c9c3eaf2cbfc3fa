"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile, .dockerignore
and deploy/k8s/. No Docker engine or cluster is needed (none exists on the CI machines).

* Every command a container runs is parsed by the real ``msmtrec`` argparse parser (never
  executed), and every ``MSMTREC_*`` variable names a real setting whose value the settings
  model accepts, so a renamed flag or setting breaks this test, not a deployment.
* The compose file is validated by the compose tool itself (``docker compose`` or Debian's
  ``docker-compose``; ``.ci/run`` installs the latter). Without one the test is skipped
  locally and fails in CI.
* The Kubernetes YAML is validated against the Kubernetes JSON schemas (strict: unknown
  fields are errors) and checked for consistent names, labels, selectors, ports, probes,
  volumes and secrets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from msmtrec_app.cli import build_parser
from msmtrec_app.commands.deploy import DEFAULT_SCENARIOS, dev_secrets

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
CLIENTS = {f"client-{s.lower()}": s for s in DEFAULT_SCENARIOS}
EXTRA_ENV = {"MSMTREC_HEALTH_URL", "HOME"}  # read by the probe / the OS, not a settings model
K8S_VERSIONS = ("1.29.0", "1.37.0")


# ------------------------------------------------------------------------------- helpers
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` with ``env`` (empty:
    the defaults), recursively."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        name, op, default = m.groups()
        if op in (":-", ":?"):
            return env.get(name) or (default if op == ":-" else "")
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(repl, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory) -> dict[str, Path]:
    """What ``msmtrec deploy dev-secrets`` writes (relative path → absolute path)."""
    root = tmp_path_factory.mktemp("secrets")
    dev_secrets(root / "secrets")
    return {
        str(p.relative_to(root / "secrets")): p
        for p in (root / "secrets").rglob("*")
        if p.is_file()
    }


def parse_command(parser, argv: list[str]):
    """The real CLI parser's verdict on ``argv`` (a failure names the command)."""
    try:
        return parser.parse_args([str(a) for a in argv])
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return None
        raise AssertionError(
            f"`msmtrec {' '.join(map(str, argv))}` is not a valid command"
        ) from None


def settings_class(prefix: str):
    from aggregator.settings import AggregatorSettings
    from gateway.settings import GatewaySettings
    from scenario_client.settings import ClientSettings

    return {
        "MSMTREC_AGGREGATOR_": AggregatorSettings,
        "MSMTREC_CLIENT_": ClientSettings,
        "MSMTREC_GATEWAY_": GatewaySettings,
    }[prefix]


def check_env(env: dict[str, str], prefix: str, monkeypatch, where: str) -> Any:
    """Every variable of ``env`` is a setting of the service (or the health probe's URL), and
    the settings model accepts the values. Returns the settings object."""
    cls = settings_class(prefix)
    fields = {f"{prefix}{name.upper()}" for name in cls.model_fields}
    for name in env:
        if name in EXTRA_ENV:
            continue
        assert name in fields, f"{where}: {name} is not a setting of {cls.__name__}"
    with monkeypatch.context() as m:
        for name in list(os.environ):
            if name.startswith("MSMTREC_"):
                m.delenv(name)
        for name, value in env.items():
            m.setenv(name, str(value))
        return cls()


def port_of(url: str) -> int:
    m = re.match(r"https?://[^/:]+:(\d+)/", url)
    assert m, url
    return int(m.group(1))


# ------------------------------------------------------------------------------ compose
def test_compose_services_and_commands(compose, parser, monkeypatch):
    services = compose["services"]
    assert set(services) == {"data-init", "aggregator", "gateway", *CLIENTS}
    expected = {"data-init": "deploy", "aggregator": "aggregator", "gateway": "gateway"}
    expected.update({name: "client" for name in CLIENTS})
    image = services["aggregator"]["image"]
    for name, svc in services.items():
        assert svc["image"] == image, name
        assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            DOCKERFILE
        ), name
        args = parse_command(parser, svc["command"])
        assert args.command == expected[name], (name, svc["command"])
        assert "restart" in svc, f"{name} has no restart policy"
    init = parse_command(parser, services["data-init"]["command"])
    assert init.deploy_command == "init-data"
    assert str(init.data) == "/data"
    assert sorted(init.scenarios) == sorted(CLIENTS.values())
    assert services["data-init"]["restart"] == "no"

    agg = check_env(
        services["aggregator"]["environment"], "MSMTREC_AGGREGATOR_", monkeypatch, "aggregator"
    )
    assert agg.host == "0.0.0.0" and agg.status_host == "0.0.0.0"
    assert agg.min_clients <= len(CLIENTS)
    gw = check_env(services["gateway"]["environment"], "MSMTREC_GATEWAY_", monkeypatch, "gateway")
    assert gw.host == "0.0.0.0"
    for name, scenario in CLIENTS.items():
        client = check_env(services[name]["environment"], "MSMTREC_CLIENT_", monkeypatch, name)
        assert client.scenario == scenario
        assert client.aggregator == f"aggregator:{agg.port}"


def _container_ports(svc: dict) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])}


def _healthcheck_url(svc: dict) -> str:
    test = svc["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "msmtrec_app.commands.healthcheck"], test
    return test[test.index("--url") + 1]


def test_compose_ports_and_health_checks(compose, monkeypatch):
    services = compose["services"]
    agg = check_env(services["aggregator"]["environment"], "MSMTREC_AGGREGATOR_", monkeypatch, "")
    gw = check_env(services["gateway"]["environment"], "MSMTREC_GATEWAY_", monkeypatch, "")
    assert _container_ports(services["aggregator"]) == {agg.port, agg.status_port}
    assert _container_ports(services["gateway"]) == {gw.port}
    for spec in services["aggregator"]["ports"] + services["gateway"]["ports"]:
        assert str(spec).startswith("127.0.0.1:"), f"{spec}: publish on loopback by default"

    # the aggregator is healthy once ready (clients wait for that); the gateway once alive
    url = _healthcheck_url(services["aggregator"])
    assert port_of(url) == agg.status_port and url.endswith("/readyz")
    url = _healthcheck_url(services["gateway"])
    assert port_of(url) == gw.port and url.endswith("/healthz")
    for name in ("aggregator", "gateway"):
        env_url = services[name]["environment"]["MSMTREC_HEALTH_URL"]
        assert port_of(env_url) == port_of(_healthcheck_url(services[name])), name
        assert services[name]["restart"] == "unless-stopped"
    for name in ("data-init", *CLIENTS):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_compose_clients_mount_only_their_own_data(compose):
    services = compose["services"]
    for name, scenario in CLIENTS.items():
        svc = services[name]
        env = svc["environment"]
        mounts = [v.split(":") for v in svc["volumes"]]
        data = [m for m in mounts if m[1].startswith("/data")]
        assert data == [["./data/" + scenario, f"/data/{scenario}", "ro"]], (name, data)
        assert env["MSMTREC_CLIENT_DATA"] == "/data"
        targets = {m[1]: m for m in mounts}
        assert targets[env["MSMTREC_CLIENT_REGISTRY"]][0] == "registry"
        assert len(targets[env["MSMTREC_CLIENT_REGISTRY"]]) == 2  # read-write
        assert targets[env["MSMTREC_CLIENT_STATE_DIR"]][0] == f"{name}-state"
        assert svc["depends_on"] == {
            "data-init": {"condition": "service_completed_successfully"},
            "aggregator": {"condition": "service_healthy"},
        }
        assert svc["restart"] == "on-failure"  # exit 0 = federation finished
        assert sorted(svc["secrets"]) == sorted([f"token_{scenario.lower()}", "tls_ca"])
        assert env["MSMTREC_CLIENT_TOKEN_FILE"] == f"/run/secrets/token_{scenario.lower()}"
        assert env["MSMTREC_CLIENT_CA_CERT"] == "/run/secrets/tls_ca"
    gateway_mounts = [v.split(":") for v in services["gateway"]["volumes"]]
    assert gateway_mounts == [
        ["registry", services["gateway"]["environment"]["MSMTREC_GATEWAY_REGISTRY"], "ro"]
    ]
    assert services["data-init"]["volumes"] == ["./data:/data"]


def test_compose_volumes_and_secrets_are_declared(compose, secret_files):
    services = compose["services"]
    named = {
        v.split(":")[0]
        for svc in services.values()
        for v in svc.get("volumes", [])
        if not v.startswith((".", "/"))
    }
    assert named == set(compose["volumes"])
    used = {s for svc in services.values() for s in svc.get("secrets", [])}
    assert used == set(compose["secrets"])
    for name, spec in compose["secrets"].items():
        rel = spec["file"].removeprefix("./deploy/secrets/")
        assert rel in secret_files, f"secret {name}: dev-secrets writes no {rel}"
    # every /run/secrets path a service reads is a secret that service mounts
    for svc_name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if str(value).startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in svc["secrets"], (svc_name, key)


def compose_tool() -> list[str] | None:
    if shutil.which("docker"):
        ok = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if ok.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid_for_the_compose_tool(secret_files, tmp_path):
    tool = compose_tool()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("no compose tool (docker compose / docker-compose): .ci/run installs one")
        pytest.skip("no compose tool installed (apt-get install docker-compose)")
    secrets_dir = next(iter(secret_files.values())).parents[1]
    env = {**os.environ, "MSMTREC_SECRETS_DIR": str(secrets_dir)}
    env = {k: v for k, v in env.items() if k not in ("DOCKER_HOST",)}
    result = subprocess.run(
        [*tool, "-f", str(COMPOSE), "config"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"{' '.join(tool)} config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"data-init", "aggregator", "gateway", *CLIENTS}
    nl = resolved["services"]["client-nl"]
    assert nl["depends_on"]["data-init"]["condition"] == "service_completed_successfully"
    assert nl["depends_on"]["aggregator"]["condition"] == "service_healthy"
    assert resolved["secrets"]["token_nl"]["file"] == str(secrets_dir / "tokens" / "NL.token")


# ----------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instruction, _, rest = buf.partition(" ")
        out.append((instruction.upper(), rest.strip()))
        buf = ""
    return out


def _one(instructions: list[tuple[str, str]], name: str) -> str:
    found = [rest for instr, rest in instructions if instr == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def test_dockerfile_entrypoint_cmd_user_and_healthcheck(parser):
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    assert ins[0] == ("FROM", "python:3.11-slim")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    entry = json.loads(_one(ins, "ENTRYPOINT"))
    assert entry == ["msmtrec"] and "msmtrec" in pyproject["project"]["scripts"]
    parse_command(parser, json.loads(_one(ins, "CMD")))
    user = _one(ins, "USER").split(":")[0]
    assert user not in ("0", "root"), "the services must not run as root"

    health = _one(ins, "HEALTHCHECK")
    options, _, command = health.partition("CMD")
    assert "--interval=" in options and "--timeout=" in options
    probe = json.loads(command.strip())
    assert probe == ["python", "-m", "msmtrec_app.commands.healthcheck"]
    default_url = next(
        rest.split("=", 1)[1] for instr, rest in ins if instr == "ENV" and "HEALTH_URL" in rest
    )
    assert default_url.endswith("/healthz")

    # ports the image documents are the ones the compose file and the manifests use
    exposed = {int(p) for p in _one(ins, "EXPOSE").split()}
    compose = interpolate(yaml.safe_load(COMPOSE.read_text()))
    used = set()
    for svc in ("aggregator", "gateway"):
        used |= _container_ports(compose["services"][svc])
    assert exposed == used


def test_dockerfile_layers_and_copies():
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    runs = [rest for instr, rest in ins if instr == "RUN"]
    torch_run = next(i for i, r in enumerate(runs) if "torch==" in r)
    pin = next(
        d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch")
    )  # fmt: skip
    assert '--index-url "$TORCH_INDEX_URL"' in runs[torch_run]
    args = dict(rest.split("=", 1) for instr, rest in ins if instr == "ARG")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # CPU wheels
    assert args["TORCH_VERSION"] == pin.split("==")[1], (args, pin)

    order = [(instr, rest) for instr, rest in ins if instr in ("RUN", "COPY")]
    torch_pos = next(i for i, (_, r) in enumerate(order) if "torch==" in r)
    copies = [(i, r) for i, (instr, r) in enumerate(order) if instr == "COPY"]
    assert copies[0][1].startswith("pyproject.toml ") and copies[0][0] > torch_pos
    code_copies = [r.split()[0] for _, r in copies[1:]]
    packages = pyproject_packages()
    assert packages <= set(code_copies), f"packages not copied: {packages - set(code_copies)}"
    ignored = dockerignore()
    for source in ["pyproject.toml", *code_copies]:
        assert (REPO / source).exists(), source
        assert not any(fnmatch(source, pat) for pat in ignored), f"{source} is .dockerignored"
    assert _one(ins, "WORKDIR").startswith("/var/lib/msmtrec")


def pyproject_packages() -> set[str]:
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    return {pattern.rstrip("*") for pattern in include}


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = dockerignore()
    for path in (".git", ".venv", "runs", "data", "deploy/secrets", ".pytest_cache"):
        assert any(fnmatch(path, pat) for pat in ignored), f"{path} is not in .dockerignore"


# ----------------------------------------------------------------------------- Kubernetes
def k8s_documents() -> Iterator[tuple[str, dict]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    docs: dict[tuple[str, str], dict] = {}
    for _, doc in k8s_documents():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in docs, f"duplicate {key}"
        docs[key] = doc
    return docs


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["namespace"] == "msmtrec"
    assert [i["name"] for i in kustomization["images"]] == ["pf-msmtrec"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version):
    import kubernetes_validate

    for filename, doc in k8s_documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{filename} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                f"{exc.message} at {'.'.join(map(str, exc.path))}"
            ) from None


def pod_specs(k8s) -> Iterator[tuple[str, dict, dict]]:
    """(workload name, pod template, workload) of every Deployment and Job."""
    for (kind, name), doc in k8s.items():
        if kind in ("Deployment", "Job"):
            yield name, doc["spec"]["template"], doc


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_k8s_commands_and_settings_are_real(k8s, parser, monkeypatch):
    prefixes = {"aggregator": "MSMTREC_AGGREGATOR_", "client": "MSMTREC_CLIENT_",
                "gateway": "MSMTREC_GATEWAY_"}  # fmt: skip
    dockerfile_user = _one(dockerfile_instructions(DOCKERFILE.read_text()), "USER")
    for name, template, _ in pod_specs(k8s):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert str(spec["securityContext"]["runAsUser"]) == dockerfile_user.split(":")[0]
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["image"] == "pf-msmtrec", (name, container["name"])
            assert "command" not in container, "keep the image's ENTRYPOINT (msmtrec)"
            args = parse_command(parser, container["args"])
            env = _env(container)
            if args.command in prefixes:
                check_env(env, prefixes[args.command], monkeypatch, f"{name}/{container['name']}")
            else:
                assert args.command == "deploy" and args.deploy_command == "init-data"


def test_k8s_services_select_their_pods_and_ports_and_probes_agree(k8s, monkeypatch):
    from aggregator.status_api import create_app as status_app
    from gateway.app import create_app as gateway_app
    from gateway.settings import GatewaySettings

    gateway = gateway_app(GatewaySettings(registry=Path("/nonexistent")))
    routes = {
        "aggregator": {r.path for r in status_app(None).routes},
        "gateway": {r.path for r in gateway.routes},
    }
    for component in ("aggregator", "gateway"):
        deployment = k8s[("Deployment", f"msmtrec-{component}")]
        service = k8s[("Service", f"msmtrec-{component}")]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == component
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports, (component, port)
            assert port["port"] == named_ports[port["targetPort"]], (component, port)
        env = _env(container)
        if component == "aggregator":
            assert named_ports == {
                "grpc": int(env["MSMTREC_AGGREGATOR_PORT"]),
                "status": int(env["MSMTREC_AGGREGATOR_STATUS_PORT"]),
            }
        else:
            assert named_ports == {"http": int(env["MSMTREC_GATEWAY_PORT"])}
        probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for kind, probe in probes.items():
            assert probe["httpGet"]["port"] in named_ports, (component, kind)
            assert probe["httpGet"]["path"] in routes[component], (component, kind)
            assert probe["httpGet"]["port"] != "grpc"


def _mounts(container: dict, volumes: dict[str, dict]) -> dict[str, dict]:
    """mountPath → volume source, for one container."""
    return {m["mountPath"]: volumes[m["name"]] | {"_readOnly": m.get("readOnly", False)}
            for m in container.get("volumeMounts", [])}  # fmt: skip


def test_k8s_volumes_claims_and_secrets_exist(k8s, secret_files):
    claims = {name for kind, name in k8s if kind == "PersistentVolumeClaim"}
    # `kubectl create secret generic NAME --from-file=DIR/` makes one key per file of DIR
    secret_keys = {
        "msmtrec-tokens": {Path(p).name for p in secret_files if p.startswith("tokens/")},
        "msmtrec-tls": {Path(p).name for p in secret_files if p.startswith("tls/")},
    }
    used_claims = set()
    for name, template, _ in pod_specs(k8s):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for vol in volumes.values():
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert claim in claims, (name, claim)
                used_claims.add(claim)
            if "secret" in vol:
                secret = vol["secret"]
                assert secret["secretName"] in secret_keys, (name, secret)
                for item in secret["items"]:
                    assert item["key"] in secret_keys[secret["secretName"]], (name, item)
        for container in (
            template["spec"].get("initContainers", []) + template["spec"]["containers"]
        ):
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= set(volumes), (name, mounted - set(volumes))
            mounts = _mounts(container, volumes)
            # every file path in the environment lies on a mount that provides it
            for key, value in _env(container).items():
                if not value.startswith("/run/secrets/"):
                    continue
                directory, filename = value.rsplit("/", 1)
                vol = mounts[directory]
                assert filename in {i["path"] for i in vol["secret"]["items"]}, (name, key)
    assert used_claims == claims, f"unused claims: {claims - used_claims}"


def test_k8s_one_client_job_per_scenario(k8s, monkeypatch):
    jobs = {name: doc for (kind, name), doc in k8s.items() if kind == "Job"}
    assert set(jobs) == {f"msmtrec-{name}" for name in CLIENTS}
    aggregator = k8s[("Service", "msmtrec-aggregator")]
    grpc_port = next(p["port"] for p in aggregator["spec"]["ports"] if p["name"] == "grpc")
    for job_name, job in jobs.items():
        scenario = CLIENTS[job_name.removeprefix("msmtrec-")]
        template = job["spec"]["template"]
        assert template["metadata"]["labels"]["msmtrec.io/scenario"] == scenario
        assert template["spec"]["restartPolicy"] == "Never"
        (init,) = template["spec"]["initContainers"]
        assert init["args"][:2] == ["deploy", "init-data"]
        assert init["args"][init["args"].index("--scenarios") + 1 :] == [scenario]
        (client,) = template["spec"]["containers"]
        settings = check_env(_env(client), "MSMTREC_CLIENT_", monkeypatch, job_name)
        assert settings.scenario == scenario
        assert settings.aggregator == f"msmtrec-aggregator:{grpc_port}"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = _mounts(client, volumes)
        data = mounts[str(settings.data)]
        assert data["persistentVolumeClaim"]["claimName"] == f"msmtrec-data-{scenario.lower()}"
        assert data["_readOnly"] is True
        token = mounts[str(Path(settings.token_file).parent)]["secret"]
        assert token["items"] == [{"key": f"{scenario}.token", "path": "token"}]
        state = mounts[str(settings.state_dir)]["persistentVolumeClaim"]["claimName"]
        assert state == f"msmtrec-client-{scenario.lower()}-state"
        assert mounts[str(settings.registry)]["persistentVolumeClaim"]["claimName"] == (
            "msmtrec-registry"
        )
    registry = k8s[("PersistentVolumeClaim", "msmtrec-registry")]
    assert registry["spec"]["accessModes"] == ["ReadWriteMany"]
    gateway = k8s[("Deployment", "msmtrec-gateway")]["spec"]["template"]["spec"]
    (gw_registry,) = [v for v in gateway["volumes"] if "persistentVolumeClaim" in v]
    assert gw_registry["persistentVolumeClaim"] == {"claimName": "msmtrec-registry",
                                                    "readOnly": True}  # fmt: skip


def test_k8s_names_and_labels_are_consistent(k8s):
    for (kind, name), doc in k8s.items():
        if kind == "Namespace":
            continue
        assert name.startswith("msmtrec-"), (kind, name)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "pf-msmtrec", (kind, name)
        assert "namespace" not in doc["metadata"], "the kustomization sets the namespace"


def test_kustomize_build_when_kubectl_is_installed():
    """kubectl's built-in kustomize renders the whole set (optional: not on CI machines)."""
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed (the schema checks above still ran)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert kinds.count("Job") == len(CLIENTS) and kinds.count("Deployment") == 2
    assert all(
        d["metadata"].get("namespace") == "msmtrec"
        for d in yaml.safe_load_all(result.stdout)
        if d and d["kind"] != "Namespace"
    )
