"""Security: authentication is not optional, TLS and mutual TLS hold, a scenario's token is
worth nothing for another scenario, nothing leaks, nothing runs as root, nothing unpickles.

(Token leaks in the logs of whole federations are checked after every fault run, by
``FaultRun.assert_nothing_leaked``; HTTP responses by the schemathesis runs.)
"""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from gateway_support import running_gateway, trained_like_model
from helpers.faults import START
from helpers.federation import Federation
from helpers.processes import REPO, free_port, wait_until

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import encode
from msmtrec.registry import WEIGHTS_FILE, ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens
from servicekit.certs import make_dev_certs

PACKAGES = (
    "msmtrec", "msmtrec_proto", "servicekit", "aggregator", "scenario_client", "gateway",
    "msmtrec_app",
)  # fmt: skip


# --------------------------------------------------------------------- authentication
def test_aggregator_refuses_to_start_without_tokens_unless_insecure_dev(tmp_path, procs):
    fed = Federation.create(tmp_path, scenarios=("A",), train_rows=100, test_rows=50)
    common = ["aggregator", "--port", str(fed.port), "--status-port", "0",
              "--state-dir", str(tmp_path / "state")]  # fmt: skip
    refused = procs.launch("no-tokens", common)
    insecure = procs.launch(
        "insecure",
        ["aggregator", "--port", str(free_port()), "--status-port", "0", "--state-dir",
         str(tmp_path / "state2"), "--insecure-dev", "--scenarios", "A", "B"],
    )  # fmt: skip
    assert refused.wait(START) == 2
    log = refused.log()
    assert "cannot start the aggregator: no tokens" in log and "--insecure-dev" in log, log
    assert "Traceback" not in log
    wait_until(lambda: "listening on" in insecure.log(), START, "the insecure aggregator",
               0.2, procs.logs)  # fmt: skip
    assert "INSECURE DEV MODE" in insecure.log()
    assert insecure.alive()
    insecure.stop()
    assert insecure.proc.returncode == 0


def test_settings_never_show_tokens():
    settings = AggregatorSettings(tokens={"A": "s3cret-token-value-0123456789"}, status_port=0)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cret-token-value" not in text


# ---------------------------------------------------------------------------- TLS
@pytest.fixture
def mtls_aggregator(tmp_path):
    certs = make_dev_certs(tmp_path / "certs", clients=["A"])
    rogue = make_dev_certs(tmp_path / "rogue", clients=["A"])  # another CA altogether
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", tls_cert=certs["server.pem"],
        tls_key=certs["server.key"], tls_client_ca=certs["ca.pem"], threads=1,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    try:
        yield settings.port, certs, rogue, tokens["A"].read_text().strip()
    finally:
        agg.stop(0)


def _get_config(port: int, creds: grpc.ChannelCredentials | None, token: str | None,
                server_name: str | None = None) -> pb.GetConfigResponse:  # fmt: skip
    target = f"127.0.0.1:{port}"
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(target, creds, options=options)
        if creds is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        return pb_grpc.FederationStub(channel).GetConfig(
            pb.GetConfigRequest(scenario="A"), metadata=md, timeout=5
        )


def test_mutual_tls_accepts_only_certificates_of_its_ca_and_still_wants_the_token(
    mtls_aggregator,
):
    port, certs, rogue, token = mtls_aggregator

    def creds(ca, cert_dir=None):
        return grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=cert_dir["client-A.key"].read_bytes() if cert_dir else None,
            certificate_chain=cert_dir["client-A.pem"].read_bytes() if cert_dir else None,
        )

    assert _get_config(port, creds(certs["ca.pem"], certs), token).protocol == wire.PROTOCOL
    unavailable = [
        ("client certificate of another CA", creds(certs["ca.pem"], rogue), None),
        ("no client certificate", creds(certs["ca.pem"]), None),
        ("server not trusted (other CA)", creds(rogue["ca.pem"], rogue), None),
        ("wrong server name", creds(certs["ca.pem"], certs), "evil.example"),
        ("plaintext", None, None),
    ]
    for what, c, name in unavailable:
        with pytest.raises(grpc.RpcError) as info:
            _get_config(port, c, token, name)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, what
    with pytest.raises(grpc.RpcError) as info:  # a valid certificate is not a credential
        _get_config(port, creds(certs["ca.pem"], certs), None)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("identity", ["scenario", "any"])
def test_mutual_tls_binds_the_certificate_to_its_scenario(tmp_path, identity):
    certs = make_dev_certs(tmp_path / "certs", clients=["A", "B"])
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", tls_cert=certs["server.pem"],
        tls_key=certs["server.key"], tls_client_ca=certs["ca.pem"],
        tls_client_identity=identity, threads=1,
    )  # fmt: skip
    agg = Aggregator(settings).start()

    def call(cert_of: str, scenario: str, rpc: str = "GetConfig") -> pb.GetConfigResponse:
        creds = grpc.ssl_channel_credentials(
            root_certificates=certs["ca.pem"].read_bytes(),
            private_key=certs[f"client-{cert_of}.key"].read_bytes(),
            certificate_chain=certs[f"client-{cert_of}.pem"].read_bytes(),
        )
        with grpc.secure_channel(f"127.0.0.1:{settings.port}", creds) as channel:
            stub = pb_grpc.FederationStub(channel)
            md = (("authorization", f"Bearer {tokens[scenario].read_text().strip()}"),)
            if rpc == "Submit":  # the upload path identifies its caller on its own
                fed = agg.federation
                enc = encode(fed.strategy.payload(scenario), [t.name for t in fed.signature])
                return stub.Submit(
                    wire.submit_stream(
                        enc, 1 << 20, scenario=scenario, round_number=1, num_samples=10, metrics={}
                    ),
                    metadata=md,
                    timeout=5,
                )
            return stub.GetConfig(pb.GetConfigRequest(scenario=scenario), metadata=md, timeout=5)

    try:
        for s in ("A", "B"):
            assert call(s, s).protocol == wire.PROTOCOL
        if identity == "any":  # the token alone binds the scenario
            assert call("A", "B").protocol == wire.PROTOCOL
            return
        # B's token (stolen, say) over A's certificate: both are valid, together they are not
        for rpc in ("GetConfig", "Submit"):
            with pytest.raises(grpc.RpcError) as info:
                call("A", "B", rpc)
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED, rpc
            assert "issued to A; it cannot act as B" in info.value.details()
            reason = dict(info.value.trailing_metadata() or ()).get("msmtrec-reason")
            assert reason == "certificate-scenario-mismatch", rpc
    finally:
        agg.stop(0)


def test_server_tls_without_client_certificates(tmp_path):
    certs = make_dev_certs(tmp_path / "certs")
    tokens = make_tokens(["A"], tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", tls_cert=certs["server.pem"],
        tls_key=certs["server.key"], min_clients=1, threads=1,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    try:
        token = tokens["A"].read_text().strip()
        ok = grpc.ssl_channel_credentials(root_certificates=certs["ca.pem"].read_bytes())
        assert _get_config(settings.port, ok, token).protocol == wire.PROTOCOL
        with pytest.raises(grpc.RpcError) as info:
            _get_config(settings.port, None, token)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        agg.stop(0)


# ------------------------------------------------------------------------ identity
def test_a_token_cannot_read_or_write_another_scenarios_parameters(tmp_path):
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    tok = {s: tokens[s].read_text().strip() for s in ("A", "B")}
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", min_clients=2, start_wait_seconds=0, threads=1,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    fed = agg.federation
    sig = wire.specs_to_proto(fed.signature)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
            stub = pb_grpc.FederationStub(channel)
            md = {s: (("authorization", f"Bearer {t}"),) for s, t in tok.items()}
            for s in ("A", "B"):
                stub.Join(pb.JoinRequest(scenario=s, spec_digest=fed.spec_digest, signature=sig),
                          metadata=md[s], timeout=10)  # fmt: skip
            wait_until(lambda: fed.status().phase.value == "open", 20, "round 1")
            before = fed.state_checksum()
            enc = encode(fed.strategy.payload("B"), [s.name for s in fed.signature])
            calls = {
                "GetConfig": lambda: stub.GetConfig(pb.GetConfigRequest(scenario="B"),
                                                    metadata=md["A"], timeout=5),
                "Join": lambda: stub.Join(
                    pb.JoinRequest(scenario="B", spec_digest=fed.spec_digest, signature=sig),
                    metadata=md["A"], timeout=5),
                "Heartbeat": lambda: stub.Heartbeat(pb.HeartbeatRequest(scenario="B"),
                                                    metadata=md["A"], timeout=5),
                "Download": lambda: list(stub.Download(pb.DownloadRequest(scenario="B"),
                                                       metadata=md["A"], timeout=5)),
                "Submit": lambda: stub.Submit(wire.submit_stream(
                    enc, 1 << 20, scenario="B", round_number=1, num_samples=10,
                    metrics={}), metadata=md["A"], timeout=5),
                "ReportMetrics": lambda: stub.ReportMetrics(
                    pb.ReportMetricsRequest(scenario="B", round=1), metadata=md["A"], timeout=5),
            }  # fmt: skip
            for rpc, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call()
                err = info.value
                assert err.code() is grpc.StatusCode.PERMISSION_DENIED, (rpc, err.details())
                assert dict(err.trailing_metadata())["msmtrec-reason"] == "wrong-scenario"
                assert tok["A"] not in err.details() and tok["B"] not in err.details()
            assert fed.state_checksum() == before
            assert fed.status().submitted == []
            # B's own token does read B's parameters (the refusals above were about identity)
            own = list(stub.Download(pb.DownloadRequest(scenario="B"), metadata=md["B"],
                                     timeout=10))  # fmt: skip
            assert own[0].WhichOneof("kind") == "header" and len(own) > 1
    finally:
        agg.stop(0)


def test_one_scenario_cannot_hold_more_than_its_share_of_calls(tmp_path):
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    md = {s: (("authorization", f"Bearer {tokens[s].read_text().strip()}"),) for s in "AB"}
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", min_clients=2, start_wait_seconds=0, threads=1,
        max_calls_per_scenario=3, max_submits_per_scenario=1,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    fed = agg.federation
    sig = wire.specs_to_proto(fed.signature)
    release = threading.Event()

    def reason(err: grpc.RpcError) -> str:
        return dict(err.trailing_metadata() or ()).get("msmtrec-reason", "")

    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
            stub = pb_grpc.FederationStub(channel)

            def config(s: str) -> pb.GetConfigResponse:
                return stub.GetConfig(pb.GetConfigRequest(scenario=s), metadata=md[s], timeout=5)

            stub.Join(pb.JoinRequest(scenario="A", spec_digest=fed.spec_digest, signature=sig),
                      metadata=md["A"], timeout=10)  # fmt: skip
            # A alone: the federation waits for B, so long polls hold their calls open
            poll = pb.HeartbeatRequest(scenario="A", wait_ms=4000)
            polls = [stub.Heartbeat.future(poll, metadata=md["A"], timeout=10) for _ in range(3)]
            wait_until(lambda: agg.servicer.in_flight.count("A") == 3, 10, "3 calls of A")
            with pytest.raises(grpc.RpcError) as info:
                config("A")
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason(info.value) == "too-many-calls"
            assert "scenario A already has 3 calls in flight" in info.value.details()
            assert config("B").protocol == wire.PROTOCOL  # the others are not starved
            for poll in polls:
                poll.result()
            wait_until(lambda: agg.servicer.in_flight.count("A") == 0, 10, "A's slots back")
            assert config("A").protocol == wire.PROTOCOL

            # uploads: one at a time per scenario here (each holds a payload buffer)
            stub.Join(pb.JoinRequest(scenario="B", spec_digest=fed.spec_digest, signature=sig),
                      metadata=md["B"], timeout=10)  # fmt: skip
            wait_until(lambda: fed.status().phase.value == "open", 20, "round 1")
            before = fed.state_checksum()
            enc = encode(fed.strategy.payload("A"), [t.name for t in fed.signature])

            def stalled():  # the header, then nothing until released
                stream = wire.submit_stream(enc, 1 << 20, scenario="A", round_number=1,
                                            num_samples=10, metrics={})  # fmt: skip
                yield next(stream)
                release.wait(20)

            first = stub.Submit.future(stalled(), metadata=md["A"], timeout=30)
            wait_until(lambda: agg.servicer.in_flight.count("A") == 1, 10, "A's upload")
            with pytest.raises(grpc.RpcError) as info:
                stub.Submit(wire.submit_stream(enc, 1 << 20, scenario="A", round_number=1,
                                               num_samples=10, metrics={}),
                            metadata=md["A"], timeout=10)  # fmt: skip
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already has 1 uploads in flight" in info.value.details()
            release.set()
            with pytest.raises(grpc.RpcError) as info:  # the stalled one ends truncated
                first.result()
            assert reason(info.value) == "stream-truncated"
            assert fed.state_checksum() == before and fed.status().submitted == []
            wait_until(lambda: agg.servicer.in_flight.count("A") == 0, 10, "A's slots back")
    finally:
        release.set()
        agg.stop(0)


# -------------------------------------------------------------------------- leaks
def test_gateway_error_responses_name_no_path_outside_the_registry(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish("NL", trained_like_model(seed=3), round=1)
    broken = registry.publish("US", trained_like_model(seed=4), round=1)
    (tmp_path / "registry" / "US" / broken / WEIGHTS_FILE).write_bytes(b"garbage")
    root = str(tmp_path / "registry")
    with running_gateway(tmp_path / "registry", poll_interval=0.1) as base:
        wait_until(lambda: httpx.get(f"{base}/v1/scenarios").json()["scenarios"][-1]
                   .get("last_refused"), 20, "the broken version to be refused")  # fmt: skip
        answers = [
            httpx.post(f"{base}/v1/scenarios/US/predict", json={"instances": [{}]}),  # 503
            httpx.post(f"{base}/v1/scenarios/XX/predict", json={"instances": [{}]}),  # 404
            httpx.post(f"{base}/v1/scenarios/NL/predict", content=b"{"),  # 422
            httpx.post(f"{base}/v1/scenarios/NL/predict", json={"instances": [{}]}),  # 422
            httpx.get(f"{base}/readyz"),  # 503, names the refusal
            httpx.get(f"{base}/v1/scenarios"),
            httpx.get(f"{base}/nothing-here"),
        ]
    assert [a.status_code for a in answers] == [503, 404, 422, 422, 503, 200, 404]
    for a in answers:
        text = a.text.replace(root, "<registry>")
        assert "Traceback" not in text and 'File "' not in text, text
        assert not re.search(r"(/tmp/|/work/|/home/|/root/|site-packages)", text), text


# ---------------------------------------------------------------------- containers
def test_containers_run_as_a_non_root_user():
    dockerfile = REPO / "deploy" / "Dockerfile"
    users = [line.split(None, 1)[1].strip() for line in dockerfile.read_text().splitlines()
             if line.strip().upper().startswith("USER ")]  # fmt: skip
    assert users, "deploy/Dockerfile sets no USER: the services would run as root"
    assert users[-1].split(":")[0] not in ("0", "root"), users[-1]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    as_root = {name for name, svc in compose["services"].items()
               if str(svc.get("user", "")).split(":")[0] in ("0", "root")}  # fmt: skip
    # the one-off data-init job may write into a host directory Docker created as root;
    # every long-running service (aggregator, clients, gateway) runs as the image's user
    assert as_root <= {"data-init"}, as_root
    if as_root:
        assert "init-data" in compose["services"]["data-init"]["command"]
        assert compose["services"]["data-init"].get("restart", "no") in ("no", "on-failure")
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = _pod_spec(doc)
            if pod is not None:
                ctx = pod.get("securityContext", {})
                assert ctx.get("runAsNonRoot") is True, f"{path.name}: {doc['metadata']['name']}"
                assert str(ctx.get("runAsUser", "1")) != "0"


def _pod_spec(doc: dict | None) -> dict | None:
    if not doc or doc.get("kind") not in ("Deployment", "Job", "StatefulSet", "Pod"):
        return None
    if doc["kind"] == "Pod":
        return doc["spec"]
    return doc["spec"]["template"]["spec"]


# ------------------------------------------------------------------------ no pickle
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal",
                  "shelve"}  # fmt: skip


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]  # fmt: skip
            found += [f"import {n}" for n in names if n.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func == "torch.load" and kwargs.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
        numpy_load = func.endswith("np.load") or func == "numpy.load"
        if numpy_load and kwargs.get("allow_pickle", "False") != "False":
            found.append("np.load(allow_pickle=True)")
        if func.endswith("read_pickle") or func.endswith("to_pickle"):
            found.append(func)
        yaml_load = func in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load")
        if yaml_load and "SafeLoader" not in kwargs.get("Loader", ""):
            found.append(f"{func} without SafeLoader")
        if func in ("eval", "exec"):
            found.append(func)
    return found


def test_nothing_deserializes_with_pickle_or_evaluates_input():
    problems = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found = _unsafe_calls(ast.parse(path.read_text(), str(path)))
            if found:
                problems[str(path.relative_to(REPO))] = found
    assert not problems, problems


def test_the_scanner_catches_what_it_looks_for():
    snippet = (
        "import pickle\nimport torch, numpy as np, yaml\n"
        "torch.load(f)\nnp.load(f, allow_pickle=True)\nyaml.load(s)\neval(x)\n"
    )
    assert len(_unsafe_calls(ast.parse(snippet))) == 5
    assert not _unsafe_calls(ast.parse("torch.load(f, weights_only=True)\nyaml.safe_load(s)"))


def test_tokens_files_are_private(tmp_path):
    paths = make_tokens(["A"], tmp_path)
    for p in paths.values():
        assert Path(p).stat().st_mode & 0o077 == 0, p
