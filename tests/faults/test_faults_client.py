"""SIGKILL of a scenario client during download, upload, local training and a registry
publish; a client that joins and never submits; a client that vanishes after joining.
Real processes on 127.0.0.1 (see docs/RELIABILITY.md for the table).

The CI test kills one client at each point in turn within one federation (the other client
and the aggregator run throughout); the ``faults_full`` tests run each point alone and,
where the restarted client repeats exactly what it lost, also check that the result equals
an uninterrupted run.
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from helpers.faults import START, FaultRun, assert_equals_uninterrupted
from helpers.processes import wait_until

from gateway.metrics import GatewayMetrics
from gateway.store import ModelStore
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.registry import TMP_PREFIX, ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc


def _served_round(run: FaultRun, scenario: str) -> int | None:
    """What a gateway started now would serve for ``scenario`` (a real ModelStore scan)."""
    store = ModelStore(ModelRegistry(run.registry), ALIEXPRESS, GatewayMetrics())
    store.refresh()
    model = store.get(scenario)
    return None if model is None else model.info.round


def test_client_killed_at_every_stage_of_a_round(make_run):
    """S0 is SIGKILLed four times — in the middle of its first download, in the middle of
    its upload, while its registry publish has written half a version, and as local training
    starts — and restarted each time. The partial upload never counts as a submission, the
    half-written version is never visible (the previous one stays servable), and the
    federation completes every round with both scenarios, each serving its final model."""
    run = make_run(rounds=3)
    agg = run.aggregator()
    other = run.client("S1")
    n = 0

    def victim_until(point: str):
        nonlocal n
        n += 1
        proc = run.client("S0", name=f"S0-{n}", pause=point)
        run.wait_paused(proc, point)
        proc.kill()
        return proc

    victim_until("client.download_chunk:3")  # round 1: 4 of 10 chunks received
    victim_until("client.upload_chunk:4")  # round 1: header + 4 of 10 chunks sent
    status = run.status()
    assert status["round"] == 1 and "S0" not in status["submitted"], status
    victim_until("registry.version_write:2")  # round 3: weights written, no metadata
    assert _served_round(run, "S0") == 1  # the half-written round-2 version is invisible
    assert [p for p in (run.registry / "S0").iterdir() if p.name.startswith(TMP_PREFIX)]
    victim_until("client.train:3")
    last = run.client("S0", name="S0-final")
    run.finish([other, last], agg)
    history = run.assert_recovered()
    assert all(r["participants"] == ["S0", "S1"] for r in history), history
    assert "resumed local state" in last.log()


# ------------------------------------------------------------------- one fault at a time
# Points after which the restarted client redoes exactly what was lost (its state on disk
# is from before the interrupted step). After a kill during the upload the client has
# already saved the round's training, so it trains the round again from there: the round
# counts once but its local parts saw the round's data twice.
EXACT = {
    "client.download_chunk:3",
    "client.train:2",
    "registry.version_write:1",
    "registry.before_latest:1",
}


@pytest.mark.faults_full
@pytest.mark.parametrize(
    "point",
    [
        "client.download_chunk:3",
        "client.upload_chunk:4",
        "client.train:2",
        "registry.version_write:1",
        "registry.before_latest:1",
    ],
)
def test_client_killed_at(make_run, point):
    run = make_run(rounds=2)
    agg = run.aggregator()
    other = run.client("S1")
    victim = run.client("S0", name="S0-killed", pause=point)
    run.wait_paused(victim, point)
    victim.kill()
    restarted = run.client("S0", name="S0-restarted")
    run.finish([other, restarted], agg)
    run.assert_recovered()
    if point in EXACT:
        assert_equals_uninterrupted(run)


# ------------------------------------------------------ clients that never submit
def test_client_that_joins_and_never_submits(make_run):
    """S2 joins and hangs before training (its heartbeat thread keeps it live, the worst
    case); S3 is a raw gRPC caller that joins and is never heard from again. Rounds close
    at their deadline with the others (S3 stops being waited for once its heartbeat
    lapses), the federation completes, and once the two are replaced by working clients
    they fetch their final personalized models, so every scenario ends up servable."""
    deadline = 8.0  # long enough for the working clients to submit on a busy machine
    run = make_run(
        scenarios=("S0", "S1", "S2", "S3"),
        rounds=2,
        train_rows=600,
        min_clients=2,
        start_wait_seconds=90,  # round 1 waits until all four joined (then opens at once)
        round_deadline_seconds=deadline,
        heartbeat_interval_seconds=1,
        heartbeat_patience=3,
    )
    agg = run.aggregator(exit_when_done=False)
    hung = run.client("S2", name="S2-hung", pause="client.train")
    workers = [run.client(s) for s in ("S0", "S1")]
    wait_until(lambda: run.status()["joined"] == ["S0", "S1", "S2"], START,
               "S0, S1 and S2 to join", 0.2, run.processes.logs)  # fmt: skip
    token = run.fed.token_file("S3").read_text().strip()
    with grpc.insecure_channel(run.fed.target) as channel:  # the ghost: join, then silence
        stub = pb_grpc.FederationStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        cfg = stub.GetConfig(pb.GetConfigRequest(scenario="S3"), metadata=md, timeout=10)
        stub.Join(
            pb.JoinRequest(scenario="S3", spec_digest=cfg.spec_digest, signature=_signature(cfg)),
            metadata=md,
            timeout=10,
        )
    run.wait_paused(hung, "client.train")
    for w in workers:
        assert w.wait(START) == 0, run.processes.logs()
    rounds = httpx.get(run.fed.url("/v1/rounds"), timeout=5).json()
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["participants"] == ["S0", "S1"] and r["closed_by"] == "deadline", r
        assert sorted(r["not_submitted"]) == ["S2", "S3"]
        assert r["deadline_extensions"] == 0  # bounded by one deadline, never longer
    assert hung.alive()  # still hung: it was simply not waited for
    hung.kill()
    late = [run.client(s, name=f"{s}-replacement") for s in ("S2", "S3")]
    for c in late:
        assert c.wait(START) == 0, run.processes.logs()
    agg.stop()
    assert agg.proc.returncode == 0, agg.tail()
    run.assert_recovered()


def _signature(cfg: pb.GetConfigResponse) -> list[pb.TensorSpec]:
    """The model signature a real client of this federation spec would present."""
    from msmtrec.codec import signature_of
    from msmtrec.federation.strategy import Strategy
    from msmtrec.spec import FederationSpec

    spec = FederationSpec.from_json(cfg.spec_json)
    strategy = Strategy(spec.federation(), spec.initial_state())
    return wire.specs_to_proto(signature_of(strategy.initial, strategy.names))
