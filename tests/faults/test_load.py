"""Load: the gateway under bounded concurrent load from several client processes while a new
model version is published, and the aggregator with 16 lightweight clients joining at once.

Sizes: CI runs 4 load processes × 2 connections × 800 requests (3,200 requests) and 16
clients × 2 rounds; MSMTREC_FULL_FAULTS=1 runs 6 × 2 × 2,500 (15,000) and 16 × 4 rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import orjson
from gateway_support import fixture_instances, trained_like_model
from helpers.faults import FULL
from helpers.processes import REPO, free_port, wait_until

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import decode, encode
from msmtrec.registry import ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens

LOADGEN = Path(__file__).resolve().parents[1] / "helpers" / "loadgen.py"
PROCESSES, REQUESTS = (6, 2500) if FULL else (4, 800)


def _instances_total(base: str, scenario: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(f'msmtrec_gateway_instances_total{{scenario="{scenario}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gateway_under_load_across_a_publish_drops_nothing(tmp_path, procs):
    registry = ModelRegistry(tmp_path / "registry")
    v1 = registry.publish("NL", trained_like_model(seed=11), round=1)
    es = registry.publish("ES", trained_like_model(seed=12), round=1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.launch("gateway", ["gateway", "--registry", str(tmp_path / "registry"),
                             "--port", str(port), "--poll-interval", "0.2"])  # fmt: skip
    wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 120, "the gateway",
               0.2, procs.logs)  # fmt: skip
    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps({"instances": fixture_instances("test")[:5]}))
    loaders = [
        subprocess.Popen(
            [
                sys.executable,
                str(LOADGEN),
                "--url",
                base,
                "--body",
                str(body),
                "--scenarios",
                "NL",
                "ES",
                "--requests",
                str(REQUESTS),
                "--threads",
                "2",
                "--until-change",
                "NL",
                "--max-seconds",
                "240",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        for _ in range(PROCESSES)
    ]
    try:
        # publish once the load is well under way (a third of the NL instances scored)
        third = PROCESSES * REQUESTS * 5 / 2 / 3
        wait_until(lambda: _instances_total(base, "NL") >= third, 240, "the load to build up",
                   0.1, procs.logs)  # fmt: skip
        v2 = registry.publish("NL", trained_like_model(seed=13), round=2)
        results = []
        for p in loaders:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out))
    finally:
        for p in loaders:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    total = sum(r["responses"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    assert sum(r["error_count"] for r in results) == 0, errors
    assert total >= PROCESSES * REQUESTS
    assert all(set(r["statuses"]) == {"200"} for r in results), [r["statuses"] for r in results]
    for r in results:  # every connection switched from v1 to v2 once, and never back
        for runs in r["versions"]:
            assert runs == [v1, v2], runs
    snapshot = httpx.get(f"{base}/v1/scenarios").json()["scenarios"]
    assert {e["scenario"]: e["version"] for e in snapshot} == {"NL": v2, "ES": es}
    p99 = max(r["p99_ms"] for r in results)
    print(f"\n{total} requests from {PROCESSES} processes, 0 errors, worst p99 {p99} ms")


def test_sixteen_clients_join_at_once_and_every_round_has_all_of_them(tmp_path):
    """16 scenario clients (raw gRPC stubs in threads: the protocol, without training) are
    released together by a barrier: they join at the same instant, then download and submit
    each round. Every round closes as soon as all 16 submitted, with all 16 as participants."""
    rounds = 4 if FULL else 2
    names = [f"C{i:02d}" for i in range(16)]
    paths = make_tokens(names, tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=paths["tokens"], port=free_port(), status_port=free_port(),
        state_dir=tmp_path / "aggregator", rounds=rounds, min_clients=16,
        start_wait_seconds=60, round_deadline_seconds=120, threads=1,
        heartbeat_interval_seconds=2, heartbeat_patience=15,
    )  # fmt: skip
    agg = Aggregator(settings).start()
    fed = agg.federation
    barrier = threading.Barrier(len(names))
    failures: list[str] = []
    joined_at: dict[str, float] = {}

    def client(name: str) -> None:
        md = (("authorization", f"Bearer {paths[name].read_text().strip()}"),)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{settings.port}") as channel:
                stub = pb_grpc.FederationStub(channel)
                cfg = stub.GetConfig(pb.GetConfigRequest(scenario=name), metadata=md, timeout=30)
                barrier.wait(timeout=60)
                status = stub.Join(
                    pb.JoinRequest(scenario=name, spec_digest=cfg.spec_digest,
                                   signature=wire.specs_to_proto(fed.signature),
                                   num_train_samples=100),
                    metadata=md, timeout=30,
                ).status  # fmt: skip
                joined_at[name] = time.monotonic()
                after = 0
                while status.phase != pb.PHASE_FINISHED:
                    if status.phase == pb.PHASE_OPEN and not status.you_submitted:
                        r = status.round
                        header, data = None, bytearray()
                        for msg in stub.Download(pb.DownloadRequest(scenario=name, round=r),
                                                 metadata=md, timeout=60):  # fmt: skip
                            if msg.WhichOneof("kind") == "header":
                                header = msg.header
                            else:
                                data += msg.data
                        specs = wire.specs_from_proto(header.manifest.tensors)
                        params = {n: t + 0.001 for n, t in decode(specs, data).items()}
                        stub.Submit(
                            wire.submit_stream(encode(params, [s.name for s in specs]),
                                               cfg.chunk_bytes, scenario=name, round_number=r,
                                               num_samples=100, metrics={"train_loss": 0.5}),
                            metadata=md, timeout=60,
                        )  # fmt: skip
                        after = r
                    status = stub.Heartbeat(
                        pb.HeartbeatRequest(scenario=name, wait_ms=5000, after_round=after),
                        metadata=md, timeout=30,
                    )  # fmt: skip
        except Exception as exc:
            failures.append(f"{name}: {exc!r}")

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a client thread hung"
        assert not failures, failures
        elapsed = time.monotonic() - start
        history = httpx.get(f"http://127.0.0.1:{settings.status_port}/v1/rounds").json()
    finally:
        agg.stop(0)
    assert max(joined_at.values()) - min(joined_at.values()) < 10.0
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    for r in history:
        assert r["participants"] == names, r["participants"]
        assert r["closed_by"] == "all_submitted"
    print(f"\n16 clients × {rounds} rounds in {elapsed:.1f} s")
