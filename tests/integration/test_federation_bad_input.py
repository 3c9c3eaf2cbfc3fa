"""Bad input changes nothing: every malformed, unauthorized, late or replayed call is refused
with a specific status and reason, and the aggregator's state checksum stays as it was.

A real aggregator (gRPC + status API) runs in this process on 127.0.0.1; the calls are made
with raw stubs so that they can be wrong in ways the scenario client never is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import httpx
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from helpers.processes import free_port, wait_until

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import Encoded, TensorSpec, decode, encode
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens

KiB = 1 << 10
MiB = 1 << 20


class Env:
    def __init__(self, tmp_path) -> None:
        paths = make_tokens(["A", "B"], tmp_path / "tokens")
        self.tokens = {s: paths[s].read_text().strip() for s in ("A", "B")}
        self.settings = AggregatorSettings(
            tokens_file=paths["tokens"],
            port=free_port(),
            status_port=free_port(),
            state_dir=tmp_path / "aggregator",
            rounds=3,
            min_clients=2,
            start_wait_seconds=0,
            round_deadline_seconds=120,
            chunk_bytes=64 * KiB,
            max_payload_bytes=1 * MiB,
            threads=1,
        )
        self.agg = Aggregator(self.settings).start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.settings.port}")
        self.stub = pb_grpc.FederationStub(self.channel)
        fed = self.agg.federation
        self.signature = fed.signature
        self.spec_digest = fed.spec_digest

    def md(self, scenario: str | None = None, token: str | None = None) -> tuple:
        token = token if token is not None else self.tokens[scenario]
        return (("authorization", f"Bearer {token}"),)

    def checksum(self) -> str:
        url = f"http://127.0.0.1:{self.settings.status_port}/v1/status"
        return httpx.get(url, timeout=5).json()["state_checksum"]

    def status(self) -> dict:
        url = f"http://127.0.0.1:{self.settings.status_port}/v1/status"
        return httpx.get(url, timeout=5).json()

    def join(self, scenario: str) -> pb.JoinResponse:
        return self.stub.Join(
            pb.JoinRequest(
                scenario=scenario,
                spec_digest=self.spec_digest,
                signature=wire.specs_to_proto(self.signature),
            ),
            metadata=self.md(scenario),
            timeout=10,
        )

    def download(self, scenario: str) -> dict[str, torch.Tensor]:
        header, data = None, bytearray()
        for msg in self.stub.Download(
            pb.DownloadRequest(scenario=scenario), metadata=self.md(scenario), timeout=10
        ):
            if msg.WhichOneof("kind") == "header":
                header = msg.header
            else:
                data += msg.data
        return decode(wire.specs_from_proto(header.manifest.tensors), data)

    def submit(self, chunks: Iterator[pb.SubmitChunk], md: tuple) -> pb.SubmitResponse:
        return self.stub.Submit(chunks, metadata=md, timeout=10)

    def close(self) -> None:
        self.channel.close()
        self.agg.stop(0)


def stream(
    encoded: Encoded,
    scenario: str,
    round_number: int = 1,
    num_samples: int = 100,
    metrics: dict | None = None,
    chunk: int = 64 * KiB,
) -> Iterator[pb.SubmitChunk]:
    return wire.submit_stream(
        encoded,
        chunk,
        scenario=scenario,
        round_number=round_number,
        num_samples=num_samples,
        metrics=metrics or {"train_loss": 0.5},
    )


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        e.join("A")
        e.join("B")
        wait_until(lambda: e.status()["phase"] == "open", 10, "round 1 to open")
        yield e
    finally:
        e.close()


def refused(call, code: grpc.StatusCode, reason: str, match: str = "") -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, (err.code(), err.details())
    if reason:
        got = dict(err.trailing_metadata() or ()).get("msmtrec-reason")
        assert got == reason, (got, err.details())
    assert match in err.details(), err.details()
    return err.details()


def perturbed(params: dict[str, torch.Tensor], by: float = 0.01) -> dict[str, torch.Tensor]:
    return {n: t + by for n, t in params.items()}


def test_each_bad_submission_is_refused_and_changes_nothing(env):
    good = perturbed(env.download("A"))
    names = [s.name for s in env.signature]
    before = env.checksum()

    def check(call, code, reason, match=""):
        refused(call, code, reason, match)
        assert env.checksum() == before, f"state changed by a refused call ({reason})"

    enc = encode(good, names)
    INVALID, PRECOND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    # identity
    check(lambda: env.submit(stream(enc, "A"), ()), grpc.StatusCode.UNAUTHENTICATED, "no-token")
    check(
        lambda: env.submit(stream(enc, "A"), env.md(token="x" * 40)),
        grpc.StatusCode.UNAUTHENTICATED,
        "bad-token",
    )
    check(
        lambda: env.submit(stream(enc, "B"), env.md("A")),
        grpc.StatusCode.PERMISSION_DENIED,
        "wrong-scenario",
        "bound to scenario A",
    )
    # shapes, dtypes, names
    wrong_shape = dict(good)
    wrong_shape[names[0]] = torch.zeros(3, 3)
    check(
        lambda: env.submit(stream(encode(wrong_shape), "A"), env.md("A")),
        INVALID,
        "bad-manifest",
        names[0],
    )
    wrong_dtype = dict(good)
    wrong_dtype[names[1]] = good[names[1]].double()
    check(
        lambda: env.submit(stream(encode(wrong_dtype), "A"), env.md("A")),
        INVALID,
        "bad-manifest",
        "float64",
    )
    extra = {**good, "experts.layers.9.weight_g": torch.zeros(2)}
    check(
        lambda: env.submit(stream(encode(extra), "A"), env.md("A")),
        INVALID,
        "bad-manifest",
        "unexpected",
    )
    missing = {n: t for n, t in good.items() if n != names[-1]}
    check(
        lambda: env.submit(stream(encode(missing), "A"), env.md("A")),
        INVALID,
        "bad-manifest",
        "missing",
    )
    # values
    for bad_value in (math.nan, math.inf, -math.inf):
        poisoned = dict(good)
        t = good[names[2]].clone()
        t.view(-1)[7] = bad_value
        poisoned[names[2]] = t
        check(
            lambda p=poisoned: env.submit(stream(encode(p, names), "A"), env.md("A")),
            INVALID,
            "bad-values",
            "NaN or Inf",
        )
    check(
        lambda: env.submit(stream(enc, "A", num_samples=0), env.md("A")), INVALID, "bad-num-samples"
    )
    check(
        lambda: env.submit(stream(enc, "A", metrics={"loss": math.nan}), env.md("A")),
        INVALID,
        "bad-metrics",
    )
    # rounds
    check(
        lambda: env.submit(stream(enc, "A", round_number=2), env.md("A")),
        PRECOND,
        "wrong-round",
        "current round is 1",
    )

    # streams: sizes and framing
    header = next(stream(enc, "A"))
    data = [pb.SubmitChunk(data=bytes(c)) for c in enc.chunks(64 * KiB)]

    def raw(messages: list[pb.SubmitChunk]):
        return lambda: env.submit(iter(messages), env.md("A"))

    big = pb.SubmitChunk()
    big.CopyFrom(header)
    big.header.manifest.total_bytes = 2 * MiB
    check(raw([big, *data]), grpc.StatusCode.RESOURCE_EXHAUSTED, "too-large", "exceeds")
    inconsistent = pb.SubmitChunk()
    inconsistent.CopyFrom(header)
    inconsistent.header.manifest.total_bytes -= 4
    check(raw([inconsistent, *data]), INVALID, "bad-manifest", "total_bytes")
    check(raw([header, *data[:-1]]), INVALID, "stream-truncated", "truncated")
    check(raw([header, *data, pb.SubmitChunk(data=b"\0" * 8)]), INVALID, "stream-overflow")
    check(raw(data), INVALID, "no-header")
    check(raw([header, data[0], header, *data[1:]]), INVALID, "bad-stream")
    check(raw([]), INVALID, "no-header")
    # one message beyond the transport limit (chunk + 1 MiB slack) is cut by gRPC itself
    check(
        raw([header, pb.SubmitChunk(data=b"\0" * (2 * MiB))]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    )
    assert env.status()["submitted"] == []

    # the same submission, done right, is accepted; a byte-identical replay is the same
    # submission (idempotent); a different one is refused
    ok = env.submit(stream(enc, "A"), env.md("A"))
    assert ok.accepted and not ok.duplicate
    after_a = env.checksum()
    assert after_a != before
    replay = env.submit(stream(enc, "A"), env.md("A"))
    assert replay.accepted and replay.duplicate and replay.payload_sha256 == ok.payload_sha256
    assert env.checksum() == after_a
    before = after_a
    other = encode(perturbed(good, 0.02), names)
    check(
        lambda: env.submit(stream(other, "A"), env.md("A")),
        grpc.StatusCode.ALREADY_EXISTS,
        "conflicting-resubmission",
    )

    # B submits: the round closes; A's late replay names the current round
    env.submit(stream(encode(perturbed(env.download("B")), names), "B"), env.md("B"))
    wait_until(lambda: env.status()["completed_rounds"] == 1, 20, "round 1 to close")
    before = env.checksum()
    check(
        lambda: env.submit(stream(enc, "A"), env.md("A")),
        PRECOND,
        "wrong-round",
        "current round is 2",
    )

    metrics = httpx.get(f"http://127.0.0.1:{env.settings.status_port}/metrics").text
    assert 'msmtrec_requests_rejected_total{reason="bad-values",rpc="Submit"} 3.0' in metrics


def test_bad_joins_and_foreign_calls_are_refused(env):
    before = env.checksum()
    PRECOND = grpc.StatusCode.FAILED_PRECONDITION

    def join(scenario="A", digest=None, signature=None, md=None):
        return lambda: env.stub.Join(
            pb.JoinRequest(
                scenario=scenario,
                spec_digest=env.spec_digest if digest is None else digest,
                signature=wire.specs_to_proto(signature or env.signature),
            ),
            metadata=md if md is not None else env.md(scenario),
            timeout=10,
        )

    wrong_sig = list(env.signature)
    s0 = wrong_sig[0]
    wrong_sig[0] = TensorSpec(s0.name, (s0.shape[0] + 1, *s0.shape[1:]), s0.dtype)
    cases = [
        (join(signature=wrong_sig), PRECOND, "signature-mismatch"),
        (join(digest="0" * 64), PRECOND, "spec-mismatch"),
        (join("B", md=env.md("A")), grpc.StatusCode.PERMISSION_DENIED, "wrong-scenario"),
        (join("C", md=env.md("A")), grpc.StatusCode.PERMISSION_DENIED, "wrong-scenario"),
        (join("bad name!", md=env.md("A")), grpc.StatusCode.INVALID_ARGUMENT, "bad-scenario"),
        (
            lambda: list(env.stub.Download(pb.DownloadRequest(scenario="B"), metadata=env.md("A"))),
            grpc.StatusCode.PERMISSION_DENIED,
            "wrong-scenario",
        ),
        (
            lambda: list(
                env.stub.Download(pb.DownloadRequest(scenario="A", round=2), metadata=env.md("A"))
            ),
            PRECOND,
            "wrong-round",
        ),
        (
            lambda: env.stub.GetConfig(pb.GetConfigRequest(scenario="A"), timeout=5),
            grpc.StatusCode.UNAUTHENTICATED,
            "no-token",
        ),
        (
            lambda: env.stub.ReportMetrics(
                pb.ReportMetricsRequest(scenario="A", round=1), metadata=env.md("A"), timeout=5
            ),
            PRECOND,
            "wrong-round",
        ),
    ]
    for call, code, reason in cases:
        refused(call, code, reason)
        assert env.checksum() == before, reason


def test_a_join_with_another_dataset_spec_is_refused_naming_the_difference(env):
    import json

    from msmtrec.data.schema import ALIEXPRESS
    from msmtrec.data.spec_file import load_spec

    before = env.checksum()

    def join(schema_json: str):
        return lambda: env.stub.Join(
            pb.JoinRequest(
                scenario="A",
                spec_digest=env.spec_digest,
                signature=wire.specs_to_proto(env.signature),
                dataset_spec_json=schema_json,
            ),
            metadata=env.md("A"),
            timeout=10,
        )

    tenrec = json.dumps(load_spec("tenrec").to_dict())
    details = refused(
        join(tenrec), grpc.StatusCode.FAILED_PRECONDITION, "dataset-spec-mismatch", "tasks: "
    )
    assert "['ctr', 'ctcvr'] != ['click', 'like']" in details, details
    assert "name: 'aliexpress' != 'tenrec'" in details, details
    assert env.checksum() == before
    refused(join("{not json"), grpc.StatusCode.FAILED_PRECONDITION, "dataset-spec-mismatch")
    # the federation's own spec (and no spec at all, an older client) joins
    env.stub.Join(pb.JoinRequest(
        scenario="A", spec_digest=env.spec_digest, signature=wire.specs_to_proto(env.signature),
        dataset_spec_json=json.dumps(ALIEXPRESS.to_dict()),
    ), metadata=env.md("A"), timeout=10)  # fmt: skip


def test_health_and_reflection_are_served(env):
    health = health_pb2_grpc.HealthStub(env.channel)
    for service in ("", wire.SERVICE):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(env.channel).get_services()
    assert wire.SERVICE in services and "grpc.health.v1.Health" in services
