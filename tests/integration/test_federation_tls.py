"""TLS: a client that trusts the right CA federates; one that does not fails cleanly (so do
a plaintext client and one with a wrong token).

Server-authenticated TLS with real processes; mutual TLS with an in-process aggregator and
raw channels (with and without a client certificate).
"""

from __future__ import annotations

import grpc
import pytest
from helpers.federation import Federation
from helpers.processes import free_port

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens
from servicekit.certs import make_dev_certs

START = 120


def test_tls_client_with_the_ca_federates_and_one_without_fails_cleanly(tmp_path, processes):
    fed = Federation.create(tmp_path, scenarios=("S0",), train_rows=1000, test_rows=300)
    certs = make_dev_certs(tmp_path / "certs")
    agg = processes.launch(
        "aggregator",
        fed.aggregator_args(
            rounds=1,
            min_clients=1,
            tls_cert=certs["server.pem"],
            tls_key=certs["server.key"],
        ),
    )
    good = processes.launch("S0", fed.client_args("S0", ca_cert=certs["ca.pem"]))
    # no CA: the client falls back to the system roots, which do not know the dev CA
    untrusting = processes.launch(
        "S0-no-ca",
        fed.client_args("S0", state_dir=tmp_path / "other", reconnect_timeout_seconds=4, tls=True),
    )
    plaintext = processes.launch(
        "S0-plaintext",
        fed.client_args("S0", state_dir=tmp_path / "plain", reconnect_timeout_seconds=4),
    )
    (tmp_path / "wrong.token").write_text("w" * 43)
    impostor = processes.launch(
        "S0-wrong-token",
        fed.client_args(
            "S0",
            state_dir=tmp_path / "impostor",
            ca_cert=certs["ca.pem"],
            token_file=tmp_path / "wrong.token",
        ),
    )
    assert good.wait(START) == 0, good.tail()
    assert impostor.wait(START) == 1, impostor.tail()
    last = impostor.log().strip().splitlines()[-1]
    assert "UNAUTHENTICATED" in last and "invalid bearer token" in last, impostor.tail()
    for bad in (untrusting, plaintext):
        assert bad.wait(START) == 1, bad.tail()
        last = bad.log().strip().splitlines()[-1]
        assert "ERROR" in last and "unreachable" in last, bad.tail()
        assert "Traceback" not in bad.log()
    assert "TLS handshake failed: check --ca-cert" in untrusting.log().strip().splitlines()[-1]
    assert "does the aggregator use TLS" in plaintext.log().strip().splitlines()[-1]
    agg.stop()
    assert agg.proc.returncode == 0, agg.tail()


@pytest.fixture
def mtls(tmp_path):
    certs = make_dev_certs(tmp_path / "certs", clients=["A"])
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"],
        port=free_port(),
        status_port=0,
        state_dir=tmp_path / "aggregator",
        tls_cert=certs["server.pem"],
        tls_key=certs["server.key"],
        tls_client_ca=certs["ca.pem"],
        threads=1,
    )
    agg = Aggregator(settings).start()
    try:
        yield settings, certs, tokens["A"].read_text().strip()
    finally:
        agg.stop(0)


def _config(settings, certs, token, cert: bool) -> pb.GetConfigResponse:
    creds = grpc.ssl_channel_credentials(
        root_certificates=certs["ca.pem"].read_bytes(),
        private_key=certs["client-A.key"].read_bytes() if cert else None,
        certificate_chain=certs["client-A.pem"].read_bytes() if cert else None,
    )
    with grpc.secure_channel(f"127.0.0.1:{settings.port}", creds) as channel:
        return pb_grpc.FederationStub(channel).GetConfig(
            pb.GetConfigRequest(scenario="A"),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=5,
        )


def test_mutual_tls_requires_a_client_certificate(mtls):
    settings, certs, token = mtls
    assert _config(settings, certs, token, cert=True).protocol == "msmtrec.federation.v1"
    with pytest.raises(grpc.RpcError) as info:
        _config(settings, certs, token, cert=False)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
