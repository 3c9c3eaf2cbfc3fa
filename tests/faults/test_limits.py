"""Requests and streams past their size limits are refused early, and the server processes do
not grow in memory while refusing them (VmRSS of the real process, from /proc).

One gateway process (``msmtrec gateway``) and one aggregator process (``msmtrec aggregator``)
on 127.0.0.1 serve the whole module.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from gateway_support import trained_like_model
from helpers.federation import Federation
from helpers.processes import ManagedProcess, ProcessGroup, free_port, wait_until

from msmtrec.registry import ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc

MiB = 1 << 20
BIG = 50 * MiB
GROWTH = 24 * MiB  # what refusing a 50 MB input may cost a process, at most


def rss(proc: ManagedProcess) -> int:
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Servers:
    def __init__(self, tmp, group: ProcessGroup) -> None:
        registry = tmp / "registry"
        ModelRegistry(registry).publish("NL", trained_like_model(seed=5), round=1)
        self.gateway_url = f"http://127.0.0.1:{free_port()}"
        self.gateway = group.launch(
            "gateway",
            ["gateway", "--registry", str(registry), "--port", self.gateway_url.rsplit(":", 1)[1]],
        )
        self.fed = Federation.create(tmp / "fed", scenarios=("A", "B"), train_rows=200,
                                     test_rows=100)  # fmt: skip
        self.aggregator = group.launch(
            "aggregator",
            self.fed.aggregator_args(rounds=2, min_clients=2, chunk_bytes=1 * MiB),
        )
        self.token = self.fed.token_file("A").read_text().strip()
        wait_until(lambda: httpx.get(self.gateway_url + "/readyz").status_code == 200, 120,
                   "the gateway", 0.2, group.logs)  # fmt: skip
        wait_until(lambda: httpx.get(self.fed.url("/readyz")).status_code == 200, 120,
                   "the aggregator", 0.2, group.logs)  # fmt: skip
        # warm both up, so that first-request allocations are not counted as growth
        body = {"instances": [{"categorical_1": 1}]}
        for _ in range(20):
            httpx.post(self.gateway_url + "/v1/scenarios/NL/predict", json=body)
            httpx.get(self.fed.url("/v1/status"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("limits")
    group = ProcessGroup(tmp / "logs")
    try:
        yield Servers(tmp, group)
    finally:
        group.stop_all()
        assert not [p.name for p in group.procs if p.alive()]


def _raw_request(url: str, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then as much of the body as the server takes, until it answers or
    hangs up; returns the response head and how many body bytes went out before that."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    response = b""
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head)
        pending = b""
        chunks = iter(body_chunks)
        while True:
            readable, writable, _ = select.select([s], [s], [], 10)
            if readable:
                break
            if not writable:
                break  # neither reading nor answering: the caller's assertion says so
            if not pending:
                pending = next(chunks, b"")
                if not pending:
                    break
            try:
                n = s.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            pending = pending[n:]
            sent += n
        try:
            while b"\r\n\r\n" not in response:
                data = s.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionError, TimeoutError):
            pass
    return response, sent


def _chunks(total: int, size: int = 256 << 10, chunked: bool = False) -> Iterator[bytes]:
    block = b"[" + b"1," * (size // 2 - 1)
    for _ in range(total // size):
        yield (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block


def test_gateway_refuses_a_50mb_body_early_without_growing(servers):
    url = servers.gateway_url
    before = rss(servers.gateway)
    start = time.monotonic()
    r = httpx.post(url + "/v1/scenarios/NL/predict", content=b"x" * BIG, timeout=30)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    # declared length over the limit: answered from the headers, the body is never read
    head = (f"POST /v1/scenarios/NL/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {BIG}\r\n\r\n").encode()  # fmt: skip
    response, sent = _raw_request(url, head, _chunks(BIG))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < BIG // 2, f"the gateway let {sent} bytes in before refusing"
    # no declared length (chunked): read up to the limit, then refused
    head = (b"POST /v1/scenarios/NL/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    response, sent = _raw_request(url, head, _chunks(BIG, chunked=True))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < BIG // 2, f"the gateway let {sent} bytes in before refusing"
    assert time.monotonic() - start < 30
    assert rss(servers.gateway) - before < GROWTH
    ok = httpx.get(url + "/readyz")  # and it still serves
    assert ok.status_code == 200


def _huge_head(url: str, path: str) -> bytes:
    """A request whose header is 50 MB: the answer (431), or b"" if the server hung up."""
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Filler: ".encode()
    response, sent = _raw_request(url, head, _chunks(BIG))
    assert sent < BIG // 2, f"{sent} header bytes were taken in"
    return response


def test_gateway_refuses_oversized_headers_and_batches(servers):
    """Found by this suite: uvicorn's httptools parser buffered request heads of any size
    (a 200 MB header grew the gateway by 220 MB); servicekit.http_limits bounds them."""
    url = servers.gateway_url
    before = rss(servers.gateway)
    r = httpx.post(url + "/v1/scenarios/NL/predict", json={"instances": [{}] * 1001}, timeout=30)
    assert r.status_code == 422 and "exceeds the limit" in r.json()["detail"]
    r = httpx.get(url + "/healthz", headers={"x-filler": "a" * (1 * MiB)}, timeout=30)
    assert r.status_code == 431
    for _ in range(3):
        response = _huge_head(url, "/healthz")
        assert response == b"" or response.startswith(b"HTTP/1.1 431"), response[:100]
    assert rss(servers.gateway) - before < GROWTH
    assert httpx.get(url + "/healthz").status_code == 200


def test_status_api_ignores_a_50mb_body_and_refuses_a_50mb_header(servers):
    before = rss(servers.aggregator)
    r = httpx.post(servers.fed.url("/v1/status"), content=b"x" * BIG, timeout=30)
    assert r.status_code == 405
    head = f"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: {BIG}\r\n\r\n".encode()
    response, _ = _raw_request(servers.fed.url(""), head, _chunks(BIG))
    assert response.startswith(b"HTTP/1.1 405"), response[:200]
    for _ in range(3):
        response = _huge_head(servers.fed.url(""), "/v1/status")
        assert response == b"" or response.startswith(b"HTTP/1.1 431"), response[:100]
    assert rss(servers.aggregator) - before < GROWTH


def test_grpc_refuses_oversized_messages_and_declarations_early(servers):
    """A 50 MB single message is cut by gRPC's own limit (chunk + 1 MiB); a declared payload
    over the limit is refused from the header; neither grows the aggregator."""
    before = rss(servers.aggregator)
    md = (("authorization", f"Bearer {servers.token}"),)
    with grpc.insecure_channel(servers.fed.target) as channel:
        stub = pb_grpc.FederationStub(channel)
        header = pb.SubmitChunk(header=pb.SubmitHeader(
            scenario="A", round=1, num_samples=1,
            manifest=pb.Manifest(total_bytes=2**63),
        ))  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(iter([header]), metadata=md, timeout=30)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            stub.Submit(iter([pb.SubmitChunk(data=b"\0" * BIG)]), metadata=md, timeout=60)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:  # a unary call of 50 MB, no token
            stub.Join(pb.JoinRequest(scenario="A", client_version="v" * BIG), timeout=60)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rss(servers.aggregator) - before < GROWTH
    assert wire.PROTOCOL  # the server still answers
    assert httpx.get(servers.fed.url("/readyz")).status_code == 200
