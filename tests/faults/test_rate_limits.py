"""Rate limits over time (issue #16): a token bucket per token on the aggregator
(RESOURCE_EXHAUSTED ``rate-limited`` with ``retry-after-ms``, which the client honours) and
per client on the gateway (429 with ``Retry-After``). Real servers on 127.0.0.1."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from gateway_support import fixture_instances, running_gateway, trained_like_model, wait_ready
from helpers.processes import free_port

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.registry import ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from scenario_client.connection import Backoff, Connection
from servicekit.auth import make_tokens
from servicekit.problems import PROBLEM_JSON, PROBLEM_TYPES
from servicekit.ratelimit import TokenBuckets


def test_token_buckets_refill_at_the_rate_and_stay_bounded():
    now = [0.0]
    buckets = TokenBuckets(2.0, 3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert buckets.take("a") == pytest.approx(0.5)  # one token refills in 1/rate s
    assert buckets.take("b") == 0.0  # another key has its own bucket
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    buckets.take("c")
    assert len(buckets) == 2  # "b", the least recently used key, was dropped
    with pytest.raises(ValueError, match="rate"):
        TokenBuckets(0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBuckets(1, 0)


def test_aggregator_limits_each_tokens_rate_and_the_client_waits_as_told(tmp_path):
    tokens = make_tokens(["A", "B"], tmp_path / "tokens")
    md = {s: (("authorization", f"Bearer {tokens[s].read_text().strip()}"),) for s in "AB"}
    settings = AggregatorSettings(
        tokens_file=tokens["tokens"], port=free_port(), status_port=0,
        state_dir=tmp_path / "aggregator", min_clients=2, start_wait_seconds=0, threads=1,
        rate_limit_per_second=2.0, rate_limit_burst=3,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
            stub = pb_grpc.FederationStub(channel)

            def config(s: str) -> pb.GetConfigResponse:
                return stub.GetConfig(pb.GetConfigRequest(scenario=s), metadata=md[s], timeout=5)

            before = agg.federation.state_checksum()
            for _ in range(3):
                config("A")
            with pytest.raises(grpc.RpcError) as info:
                config("A")
            err = info.value
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            trailing = dict(err.trailing_metadata() or ())
            assert trailing["msmtrec-reason"] == "rate-limited"
            wait_ms = int(trailing["retry-after-ms"])
            assert 1 <= wait_ms <= 500, trailing
            assert "over its rate of 2 calls/s" in err.details()
            assert config("B").protocol == wire.PROTOCOL  # B's bucket is its own
            assert agg.federation.state_checksum() == before
            time.sleep(wait_ms / 1000 + 0.05)
            assert config("A").protocol == wire.PROTOCOL  # refilled as announced

        # the client's connection retries a rate-limited call after retry-after-ms
        conn = Connection(
            f"127.0.0.1:{settings.port}", tokens["A"].read_text().strip(),
            rpc_timeout=5, transfer_timeout=10, reconnect_timeout=20,
            backoff=Backoff(0.01, 0.02),
        )  # fmt: skip
        try:
            start = time.monotonic()
            for _ in range(6):  # 3 from the burst, then one per 0.5 s
                conn.call(
                    "GetConfig",
                    lambda: conn.stub.GetConfig(
                        pb.GetConfigRequest(scenario="A"), metadata=conn.metadata, timeout=5
                    ),
                )
            assert time.monotonic() - start >= 1.0  # ≥ 3 waits of ~0.5 s, not 0.01 s backoffs
        finally:
            conn.close()
    finally:
        agg.stop(0)


def test_gateway_limits_each_clients_rate_with_429_and_retry_after(tmp_path):
    ModelRegistry(tmp_path).publish("NL", trained_like_model(1), round=1)
    body = {"instances": fixture_instances()[:2]}
    with (
        running_gateway(tmp_path, rate_limit_per_second=1.0, rate_limit_burst=2) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        wait_ready(client)
        codes = [client.post("/v1/scenarios/NL/predict", json=body).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = client.post("/v1/scenarios/NL/predict", json=body)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        problem = refused.json()  # RFC 9457, the one table's row (servicekit/problems.py)
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert problem["type"] == PROBLEM_TYPES["rate-limited"].uri and problem["status"] == 429
        assert "requests/s per client" in problem["detail"]
        assert client.get("/readyz").status_code == 200  # health is never limited
        time.sleep(1.05)
        assert client.post("/v1/scenarios/NL/predict", json=body).status_code == 200
        assert 'reason="rate_limited"' in client.get("/metrics").text
