"""Hostile input over gRPC: property-based fuzzing of the upload stream and the other calls.

A real aggregator (gRPC server, controller thread, checkpoints) runs in this process on
127.0.0.1, and Hypothesis drives raw stubs: random tokens and scenarios, rounds, sample
counts, metrics; manifests with tensors permuted, dropped, duplicated, renamed, reshaped,
given unknown dtypes or absurd declared sizes; streams with chunks of random sizes,
swapped, duplicated, missing, empty or oversized, headers missing, late or repeated; and
NaN/±Inf written into the values.

The properties, checked after every call:

* no call ever ends in UNKNOWN or INTERNAL (an unhandled exception in a handler), and no
  status message carries a traceback, a token or the server's state directory;
* a refused call leaves the state checksum exactly as it was;
* an accepted call was well formed: the manifest is the signature (in any order), the bytes
  add up to it, the round is the open one, the values are finite and the sample count
  positive; a duplicate changes nothing.

Example counts: the ``faults-ci`` Hypothesis profile in CI, ``faults-full`` with
MSMTREC_FULL_FAULTS=1 (tests/faults/conftest.py).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import grpc
import pytest
import torch
from helpers.faults import PROFILE
from helpers.processes import free_port, wait_until
from hypothesis import event, given, settings
from hypothesis import strategies as st

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import DTYPES, TensorSpec, decode, encode
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens

KiB, MiB = 1 << 10, 1 << 20
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


@dataclass
class Server:
    agg: Aggregator
    stub: pb_grpc.FederationStub
    tokens: dict[str, str]
    secrets: list[str]  # strings no response may contain
    base: dict[str, torch.Tensor]  # finite shared parameters of the right signature
    names: list[str]

    @property
    def fed(self):
        return self.agg.federation

    def md(self, token: str | None) -> tuple:
        return () if token is None else (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    paths = make_tokens(["A", "B"], root / "tokens")
    tokens = {s: paths[s].read_text().strip() for s in ("A", "B")}
    settings_ = AggregatorSettings(
        tokens_file=paths["tokens"],
        port=free_port(),
        status_port=0,
        state_dir=root / "aggregator",
        rounds=100_000,
        min_clients=2,
        start_wait_seconds=0,
        round_deadline_seconds=600,
        chunk_bytes=64 * KiB,
        max_payload_bytes=1 * MiB,
        threads=1,
        heartbeat_interval_seconds=60,  # no client is lost while the fuzzer thinks
    )
    agg = Aggregator(settings_).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{settings_.port}")
    stub = pb_grpc.FederationStub(channel)
    fed = agg.federation
    for s in ("A", "B"):
        stub.Join(
            pb.JoinRequest(
                scenario=s,
                spec_digest=fed.spec_digest,
                signature=wire.specs_to_proto(fed.signature),
            ),
            metadata=(("authorization", f"Bearer {tokens[s]}"),),
            timeout=10,
        )
    wait_until(lambda: fed.status().phase.value == "open", 20, "round 1 to open")
    names = [s.name for s in fed.signature]
    base = {n: t + 0.01 for n, t in fed.strategy.payload("A").items()}
    secrets = [*tokens.values(), str(root)]
    try:
        yield Server(agg, stub, tokens, secrets, base, names)
    finally:
        channel.close()
        agg.stop(0)


def _check_error(server: Server, err: grpc.RpcError) -> None:
    code, details = err.code(), err.details() or ""
    assert code in ALLOWED, (code, details)
    assert "Traceback" not in details and "Exception calling application" not in details
    for secret in server.secrets:
        assert secret not in details, details
    reason = dict(err.trailing_metadata() or ()).get("msmtrec-reason")
    # every refusal names its reason, except a message cut by gRPC's own size limit
    assert reason or code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)


def _settle(server: Server) -> None:
    """After an accepted submission: if it completed the round, wait for the next one."""
    fed = server.fed
    wait_until(
        lambda: fed.status().phase.value == "open" and len(fed.status().submitted) < 2,
        30, "the round to close and the next to open",
    )  # fmt: skip


# ------------------------------------------------------------------- the upload stream
def _poison(buf: bytearray, offset: int, value: float) -> None:
    struct.pack_into("<f", buf, offset, value)


names_st = st.text(min_size=0, max_size=80)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, percent: int = 80):
    """``good`` in ``percent`` % of the draws (what shrinking tends to), else ``bad``: most
    examples get past the early checks and exercise the deeper ones."""
    return st.integers(0, 99).flatmap(lambda i: good if i < percent else bad)


shape_st = st.lists(st.integers(min_value=-3, max_value=2**40), max_size=10)
dtype_st = st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=12))


@st.composite
def manifests(draw, specs: list[TensorSpec]) -> tuple[list[TensorSpec], int | None]:
    """The signature, maybe permuted and mutated; a declared total or None (= consistent)."""
    specs = list(specs)
    if draw(st.booleans()):
        specs = draw(st.permutations(specs))
    for _ in range(draw(mostly(st.just(0), st.integers(1, 3), 50))):
        op = draw(st.sampled_from(["drop", "dup", "rename", "reshape", "dtype", "add"]))
        i = draw(st.integers(0, len(specs) - 1)) if specs else 0
        if not specs and op != "add":
            continue
        if op == "drop":
            specs.pop(i)
        elif op == "dup":
            specs.insert(i, specs[i])
        elif op == "rename":
            specs[i] = TensorSpec(draw(names_st), specs[i].shape, specs[i].dtype)
        elif op == "reshape":
            specs[i] = TensorSpec(specs[i].name, tuple(draw(shape_st)), specs[i].dtype)
        elif op == "dtype":
            specs[i] = TensorSpec(specs[i].name, specs[i].shape, draw(dtype_st))
        else:
            specs.append(TensorSpec(draw(names_st), tuple(draw(shape_st)), draw(dtype_st)))
    total = draw(
        mostly(
            st.none(),
            st.one_of(
                st.integers(0, 2**64 - 1),
                st.sampled_from([0, 1 * MiB, 1 * MiB + 1, 2**63, 2**64 - 1]),
            ),
        )
    )
    return specs, total


def _nbytes(spec: TensorSpec) -> int | None:
    if spec.dtype not in DTYPES or any(d < 0 for d in spec.shape) or len(spec.shape) > 8:
        return None
    return spec.nbytes


def _payload(server: Server, specs: list[TensorSpec], rng_bytes: bytes) -> bytearray:
    """Bytes laid out as ``specs`` declare, from the real parameters where a name and size
    match, else from ``rng_bytes`` (random, so possibly NaN). Capped at 2 MiB."""
    out = bytearray()
    for spec in specs:
        n = _nbytes(spec)
        if n is None or len(out) + n > 2 * MiB:
            break
        t = server.base.get(spec.name)
        if t is not None and spec.dtype == "float32" and t.numel() * 4 == n:
            out += encode({spec.name: t}).buffer.tobytes()
        else:
            out += (rng_bytes * (n // max(1, len(rng_bytes)) + 1))[:n]
    return out


@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_fuzzed_uploads_never_corrupt_state(server, data):
    fed = server.fed
    status = fed.status()
    current = status.round
    scenario = data.draw(mostly(st.sampled_from(["A", "B"]), names_st, 90), label="scenario")
    owner = scenario if scenario in server.tokens else "A"
    token = data.draw(
        mostly(
            st.just(server.tokens[owner]),
            st.one_of(
                st.sampled_from([*server.tokens.values(), None, "", "x" * 40]),
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
            ),
            90,
        ),
        label="token",
    )
    round_number = data.draw(mostly(st.just(current), st.integers(0, 2**64 - 1), 90), label="round")
    num_samples = data.draw(
        mostly(st.integers(1, 10**6), st.integers(0, 2**64 - 1), 90), label="num_samples"
    )
    metrics = data.draw(
        mostly(
            st.just({"train_loss": 0.5}),
            st.dictionaries(names_st, st.floats(allow_nan=True, allow_infinity=True), max_size=40),
            85,
        ),
        label="metrics",
    )
    specs, declared = data.draw(manifests(list(fed.signature)), label="manifest")
    sizes = [_nbytes(s) for s in specs]
    consistent_total = sum(sizes) if None not in sizes else 0
    total = min(consistent_total if declared is None else declared, 2**64 - 1)
    rng_bytes = data.draw(st.binary(min_size=1, max_size=64), label="filler")
    payload = _payload(server, specs, rng_bytes)
    for _ in range(data.draw(mostly(st.just(0), st.integers(1, 2), 70), label="poison")):
        if len(payload) >= 4:
            at = data.draw(st.integers(0, len(payload) // 4 - 1)) * 4
            _poison(payload, at, data.draw(st.sampled_from([math.nan, math.inf, -math.inf])))
    chunk = data.draw(
        st.one_of(st.integers(4 * KiB, 200 * KiB), st.just(64 * KiB), st.just(3 * MiB)),
        label="chunk",
    )
    chunks = [bytes(payload[i : i + chunk]) for i in range(0, len(payload), chunk)]
    header = pb.SubmitHeader(
        scenario=scenario,
        round=round_number,
        num_samples=num_samples,
        metrics=metrics,
        manifest=pb.Manifest(tensors=wire.specs_to_proto(specs), total_bytes=total),
    )
    messages = [pb.SubmitChunk(header=header), *(pb.SubmitChunk(data=c) for c in chunks)]
    for _ in range(data.draw(mostly(st.just(0), st.integers(1, 2), 60), label="stream_ops")):
        op = data.draw(st.sampled_from(["swap", "dup", "drop", "empty", "header", "noheader"]))
        if len(messages) < 2 and op in ("swap", "dup", "drop", "empty", "header"):
            continue
        i = data.draw(st.integers(1, max(1, len(messages) - 1)))
        i = min(i, len(messages) - 1)
        if op == "swap" and len(messages) > 2:
            j = data.draw(st.integers(1, len(messages) - 1))
            messages[i], messages[j] = messages[j], messages[i]
        elif op == "dup":
            messages.insert(i, messages[i])
        elif op == "drop":
            messages.pop(i)
        elif op == "empty":
            messages.insert(i, pb.SubmitChunk(data=b""))
        elif op == "header":
            messages.insert(i, pb.SubmitChunk(header=header))
        elif messages:
            messages.pop(0)

    before = fed.state_checksum()
    try:
        response = server.stub.Submit(iter(messages), metadata=server.md(token), timeout=30)
    except grpc.RpcError as err:
        _check_error(server, err)
        assert fed.state_checksum() == before, f"a refused call changed the state ({err.code()})"
        reason = dict(err.trailing_metadata() or ()).get("msmtrec-reason")
        event(f"refused {err.code().name} {reason}")
        return
    event("accepted (duplicate)" if response.duplicate else "accepted")

    # Accepted: it must have been well formed.
    assert token == server.tokens.get(scenario), "accepted with another scenario's token"
    assert round_number == current
    assert num_samples > 0
    assert sorted(specs, key=lambda s: s.name) == sorted(fed.signature, key=lambda s: s.name)
    assert total == consistent_total
    sent = [m for m in messages if m.WhichOneof("kind") == "data"]
    assert messages[0].WhichOneof("kind") == "header" and len(messages) == len(sent) + 1
    body = b"".join(m.data for m in sent)
    assert len(body) == total
    decoded = decode(tuple(specs), body, check_finite=True)  # raises on NaN/Inf
    assert set(decoded) == set(server.names)
    assert all(math.isfinite(v) for v in metrics.values())
    if response.duplicate:
        assert fed.state_checksum() == before
    else:
        assert fed.state_checksum() != before
        _settle(server)


# ------------------------------------------------------------- every other call
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_fuzzed_calls_are_refused_cleanly(server, data):
    """GetConfig, Join, Heartbeat, Download and ReportMetrics with random fields: each is
    answered or refused with a reasoned status; a refused one changes no state."""
    fed = server.fed
    scenario = data.draw(mostly(st.sampled_from(["A", "B"]), names_st), label="scenario")
    token = data.draw(
        mostly(
            st.just(server.tokens.get(scenario, server.tokens["A"])),
            st.sampled_from([*server.tokens.values(), None, "y" * 40]),
        ),
        label="token",
    )
    md = server.md(token)
    rpc = data.draw(
        st.sampled_from(["GetConfig", "Join", "Heartbeat", "Download", "ReportMetrics"]),
        label="rpc",
    )
    u64 = st.integers(0, 2**64 - 1)
    if rpc == "GetConfig":
        call = lambda: server.stub.GetConfig(  # noqa: E731
            pb.GetConfigRequest(scenario=scenario), metadata=md, timeout=10
        )
    elif rpc == "Join":
        specs, _ = data.draw(manifests(list(fed.signature)))
        digest = data.draw(st.one_of(st.just(fed.spec_digest), st.text(max_size=70)))
        request = pb.JoinRequest(
            scenario=scenario,
            spec_digest=digest,
            signature=wire.specs_to_proto(specs),
            num_train_samples=data.draw(u64),
            client_version=data.draw(st.text(max_size=100)),
        )
        call = lambda: server.stub.Join(request, metadata=md, timeout=10)  # noqa: E731
    elif rpc == "Heartbeat":
        request = pb.HeartbeatRequest(
            scenario=scenario,
            session_id=data.draw(st.text(max_size=40)),
            wait_ms=data.draw(st.sampled_from([0, 1, 50])),
            after_round=data.draw(u64),
        )
        call = lambda: server.stub.Heartbeat(request, metadata=md, timeout=10)  # noqa: E731
    elif rpc == "Download":
        request = pb.DownloadRequest(scenario=scenario, round=data.draw(u64))

        def call():
            return sum(len(m.data) for m in server.stub.Download(request, metadata=md, timeout=10))
    else:
        floats = st.floats(allow_nan=True, allow_infinity=True)
        tasks = st.lists(
            st.builds(
                lambda t, a, ll, n, p: pb.TaskMetrics(task=t, auc=a, logloss=ll, n=n, positives=p),
                names_st, floats, floats, u64, u64,
            ),
            max_size=20,
        )  # fmt: skip
        splits = st.lists(
            st.builds(lambda s, t: pb.SplitMetrics(split=s, tasks=t),
                      st.one_of(st.sampled_from(["valid", "test", "train"]), names_st), tasks),
            max_size=4,
        )  # fmt: skip
        request = pb.ReportMetricsRequest(
            scenario=scenario,
            round=data.draw(u64),
            splits=data.draw(splits),
            timings=data.draw(st.dictionaries(names_st, floats, max_size=40)),
        )
        call = lambda: server.stub.ReportMetrics(request, metadata=md, timeout=10)  # noqa: E731

    before = fed.state_checksum()
    try:
        call()
    except grpc.RpcError as err:
        _check_error(server, err)
        assert fed.state_checksum() == before, f"refused {rpc} changed the state"
        event(f"{rpc} refused {err.code().name}")
        return
    event(f"{rpc} answered")
    assert token == server.tokens.get(scenario), f"{rpc} answered another scenario's token"


def test_huge_declared_uploads_are_refused_before_allocation(server):
    """Declared sizes up to 2**64-1 are refused from the header alone: the process does not
    grow by anything near what was declared (read from /proc/self/status)."""

    def rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    fed = server.fed
    before, grown = fed.state_checksum(), rss()
    for total in (2 * MiB, 1 << 32, 1 << 40, 2**63, 2**64 - 1):
        for specs in ([TensorSpec("x", (total // 4,), "float32")], list(fed.signature)):
            header = pb.SubmitHeader(
                scenario="A",
                round=fed.status().round,
                num_samples=1,
                manifest=pb.Manifest(tensors=wire.specs_to_proto(specs), total_bytes=total),
            )
            with pytest.raises(grpc.RpcError) as info:
                server.stub.Submit(
                    iter([pb.SubmitChunk(header=header), pb.SubmitChunk(data=os.urandom(1024))]),
                    metadata=server.md(server.tokens["A"]),
                    timeout=10,
                )
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "exceeds the limit" in info.value.details()
    assert fed.state_checksum() == before
    assert rss() - grown < 64 * MiB


@pytest.mark.parametrize(
    "bad",
    [
        TensorSpec("experts.layers.0.weight_g", (3,), "1/0"),  # unknown dtype
        TensorSpec("experts.layers.0.weight_g", (-1, 4), "float32"),  # negative dimension
        TensorSpec("", (1,), "float32"),
        TensorSpec("x", tuple([2] * 9), "float32"),  # too many dimensions
    ],
)
def test_join_with_a_malformed_signature_is_a_clean_refusal(server, bad):
    """Found by the full fuzz run: a signature entry with an unknown dtype crashed Join with
    an unhandled KeyError (UNKNOWN, traceback in the log) instead of a refusal."""
    fed = server.fed
    signature = [bad, *fed.signature[1:]]
    before = fed.state_checksum()
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Join(
            pb.JoinRequest(
                scenario="A", spec_digest=fed.spec_digest, signature=wire.specs_to_proto(signature)
            ),
            metadata=server.md(server.tokens["A"]),
            timeout=10,
        )
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert dict(info.value.trailing_metadata())["msmtrec-reason"] == "signature-mismatch"
    assert fed.state_checksum() == before
