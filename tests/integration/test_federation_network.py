"""Networked federation, end to end: real aggregator and client processes on 127.0.0.1.

* 3 clients × 2 rounds over gRPC give the same personalized parameters (and the same local
  parts) as the in-process simulation with the same seed and data, for pfmsmtrec and for
  methods with client-side behaviour of their own (Ditto's personal model, FedRep's
  alternating head/body steps).
* An aggregator killed between rounds resumes at the next round from its checkpoint, no
  completed round is lost, the clients carry on, and the result is still the simulation's.
* A client killed during a round: the round closes at its deadline with the others; the
  restarted client rejoins, resumes its local state and takes part in the next round.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from helpers.federation import Federation
from helpers.memory import spill_mappings
from helpers.processes import get_json, wait_until
from safetensors.torch import load_file

from aggregator.checkpoint import CheckpointStore
from msmtrec.federation.strategy import Strategy
from msmtrec.simulation import run_simulation
from msmtrec.spec import FederationSpec
from scenario_client.state import FILE as CLIENT_STATE_FILE

START = 120  # seconds: process start-up on a busy 2-core machine (torch + sklearn imports)


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate(
    fed: Federation, rounds: int, method: str = "pfmsmtrec"
) -> dict[str, dict[str, torch.Tensor]]:
    """Full state of every simulated client after the last round (same spec as the
    aggregator's defaults in helpers.federation), method extras (``ditto.*``) included."""
    spec = FederationSpec(rounds=rounds, method=method)
    captured: dict[str, dict[str, torch.Tensor]] = {}

    def on_round(r: int, clients) -> None:
        if r == rounds:
            captured.update({s: c.full_state() for s, c in clients.items()})

    with torch_threads(1):
        run_simulation(spec.to_simulation(fed.data), log=lambda _: None, on_round=on_round)
    return captured


def aggregator_payloads(
    fed: Federation, rounds: int, method: str = "pfmsmtrec"
) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = CheckpointStore(fed.state_dir / "checkpoints").load_latest()
    assert ckpt is not None and ckpt.round == rounds
    spec = FederationSpec(rounds=rounds, method=method)
    strategy = Strategy(spec.federation(), spec.initial_state())
    strategy.load_state_dict(ckpt.tensors, ckpt.state["strategy"])
    return {s: strategy.payload(s) for s in fed.scenarios}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) <= set(b), sorted(set(a) - set(b))[:5]
    worst = 0.0
    for name, t in a.items():
        if t.is_floating_point():
            worst = max(worst, float((t.double() - b[name].double()).abs().max()))
        else:
            assert torch.equal(t, b[name]), name
    return worst


def assert_matches_simulation(fed: Federation, rounds: int, method: str = "pfmsmtrec") -> None:
    sim = simulate(fed, rounds, method)
    payloads = aggregator_payloads(fed, rounds, method)
    for s in fed.scenarios:
        # what the server would send each client next: its personalized shared tensors
        assert max_abs_diff(payloads[s], sim[s]) <= 1e-6, s
        # and everything the client holds, local parts (BN, embeddings, W_T, gates) included
        local = load_file(str(fed.client_state_dir(s) / CLIENT_STATE_FILE))
        assert set(local) == set(sim[s])
        assert max_abs_diff(local, sim[s]) <= 1e-6, s


# pfmsmtrec runs with --spill-dir: the per-client server state in memory-mapped files must
# give the same numbers (the resume and partial-participation tests cover it in RAM)
@pytest.mark.parametrize("method", ["pfmsmtrec", "ditto", "fedrep"])
def test_network_equals_simulation_and_status_api_reports_rounds(tmp_path, processes, method):
    fed = Federation.create(tmp_path)
    spill = tmp_path / "spill" if method == "pfmsmtrec" else None
    agg = processes.launch(
        "aggregator",
        fed.aggregator_args(rounds=2, exit_when_done=False, method=method, spill_dir=spill),
    )
    clients = [processes.launch(s, fed.client_args(s)) for s in fed.scenarios]
    for c in clients:
        assert c.wait(START) == 0, c.tail()

    rounds = get_json(fed.url("/v1/rounds"))
    assert [r["round"] for r in rounds] == [1, 2]
    payload_bytes = get_json(fed.url("/v1/status"))["payload_bytes"]
    for r in rounds:
        assert r["participants"] == list(fed.scenarios)
        assert r["closed_by"] == "all_submitted"
        assert r["duration_seconds"] > 0
        for s in fed.scenarios:
            c = r["clients"][s]
            # each client moves its shared parameters once each way per round (+ framing)
            assert payload_bytes <= c["bytes_in"] <= payload_bytes * 1.01 + 4096
            assert payload_bytes <= c["bytes_out"] <= payload_bytes * 1.01 + 4096
            assert c["num_samples"] == 1800  # 2000 rows minus the 10 % validation tail
            assert c["metrics"]["train_loss"] > 0
            valid = c["eval"]["valid"]
            assert set(valid) == {"ctr", "ctcvr"}
            assert valid["ctr"]["n"] == 200 and 0.0 <= valid["ctr"]["auc"] <= 1.0
        t = r["timing"]
        assert t["local_training_seconds_max"] > 0 and t["aggregation_seconds"] > 0
    one = get_json(fed.url("/v1/rounds/2"))
    assert one["round"] == 2
    status = get_json(fed.url("/v1/status"))
    assert status["phase"] == "finished" and status["completed_rounds"] == 2
    clients_view = get_json(fed.url("/v1/clients"))
    assert all(c["final_fetched"] and c["rounds"] == [1, 2] for c in clients_view)
    metrics = get_json_text(fed.url("/metrics"))
    assert "msmtrec_rounds_completed_total 2.0" in metrics
    assert get_json(fed.url("/healthz"))["status"] == "ok"
    assert get_json(fed.url("/readyz"))["status"] == "ready"
    assert "/v1/rounds/{n}" in get_json(fed.url("/openapi.json"))["paths"]
    if spill is not None:  # personalized experts and last deltas of both clients, no files
        assert spill_mappings(spill, agg.proc.pid) >= 2 * len(fed.scenarios)
        assert list(spill.iterdir()) == []
    agg.stop()
    assert agg.proc.returncode == 0, agg.tail()

    assert_matches_simulation(fed, rounds=2, method=method)


def get_json_text(url: str) -> str:
    import httpx

    r = httpx.get(url, timeout=5)
    r.raise_for_status()
    return r.text


def test_aggregator_killed_between_rounds_resumes_and_result_is_unchanged(tmp_path, processes):
    fed = Federation.create(tmp_path)
    args = fed.aggregator_args(rounds=3, exit_when_done=True)
    agg = processes.launch("aggregator", args)
    clients = [processes.launch(s, fed.client_args(s)) for s in fed.scenarios]

    def completed() -> list[int]:
        return [r["round"] for r in get_json(fed.url("/v1/rounds"), timeout=2)]

    wait_until(lambda: completed(), START, "round 1 to complete", 0.05, processes.logs)
    agg.kill()  # SIGKILL right after a round's checkpoint: no shutdown code runs
    durable = CheckpointStore(fed.state_dir / "checkpoints").rounds()
    assert durable and durable[-1] >= 1

    agg2 = processes.launch("aggregator-restarted", args)
    assert agg2.wait(START) == 0, agg2.tail()
    for c in clients:
        assert c.wait(30) == 0, c.tail()
    assert f"resumed after round {durable[-1]}" in agg2.log()

    history = CheckpointStore(fed.state_dir / "checkpoints").load_latest().state["history"]
    assert [r["round"] for r in history] == [1, 2, 3]  # nothing lost, nothing twice
    resumed = [r["round"] for r in history if r["resumed_after_restart"]]
    assert resumed == [durable[-1] + 1]
    assert all(r["participants"] == list(fed.scenarios) for r in history)
    assert_matches_simulation(fed, rounds=3)


def test_client_killed_mid_round_misses_it_and_rejoins_the_next(tmp_path, processes):
    deadline = 12.0
    fed = Federation.create(tmp_path)
    agg = processes.launch(
        "aggregator",
        fed.aggregator_args(
            rounds=4,
            min_clients=2,
            round_deadline_seconds=deadline,
            heartbeat_interval_seconds=1,
            heartbeat_patience=60,  # the lost client stays "expected": rounds wait to deadline
            exit_when_done=True,
        ),
    )
    clients = {s: processes.launch(s, fed.client_args(s)) for s in fed.scenarios}
    victim = fed.scenarios[-1]

    def rounds() -> list[dict]:
        return get_json(fed.url("/v1/rounds"), timeout=2)

    wait_until(lambda: rounds(), START, "round 1 to complete", 0.05, processes.logs)
    clients[victim].kill()  # it is now downloading, evaluating or training round 2

    def missed() -> dict | None:
        return next((r for r in rounds() if victim not in r["participants"]), None)

    gap = wait_until(missed, 3 * deadline, f"a round without {victim}", 0.2, processes.logs)
    others = [s for s in fed.scenarios if s != victim]
    assert gap["participants"] == others
    assert gap["closed_by"] == "deadline"
    assert gap["duration_seconds"] >= deadline - 0.5
    assert gap["not_submitted"] == [victim]
    assert gap["round"] < 4, "the victim was killed too late to rejoin within 4 rounds"

    restarted = processes.launch(f"{victim}-restarted", fed.client_args(victim))
    assert restarted.wait(START) == 0, restarted.tail()
    for s in others:
        assert clients[s].wait(60) == 0, clients[s].tail()
    assert agg.wait(30) == 0, agg.tail()
    assert "resumed local state" in restarted.log()

    history = {r["round"]: r for r in rounds_from_checkpoint(fed)}
    assert history[gap["round"] + 1]["participants"] == list(fed.scenarios)
    assert sorted(history) == [1, 2, 3, 4]


def rounds_from_checkpoint(fed: Federation) -> list[dict]:
    return CheckpointStore(fed.state_dir / "checkpoints").load_latest().state["history"]


def test_partial_participation_network_equals_simulation(tmp_path, processes):
    """Two of three clients sampled per round (seed 0: S0+S2, S1+S2, S0+S1): the aggregator
    samples exactly what the simulation samples, a client left out downloads and evaluates
    but neither trains nor submits, and every client's state and personalized payload at the
    end equal the in-process simulation's."""
    from msmtrec.federation.sampling import round_participants

    rounds = 3
    fed = Federation.create(tmp_path)
    agg = processes.launch(
        "aggregator", fed.aggregator_args(rounds=rounds, exit_when_done=False, clients_per_round=2)
    )
    clients = [processes.launch(s, fed.client_args(s)) for s in fed.scenarios]
    for c in clients:
        assert c.wait(START) == 0, c.tail()
    spec = FederationSpec(rounds=rounds, federation_overrides={"clients_per_round": 2})
    expected = {r: list(round_participants(fed.scenarios, r, 0, spec.federation()))
                for r in range(1, rounds + 1)}  # fmt: skip
    assert len({tuple(v) for v in expected.values()}) == rounds  # the sample does vary
    records = get_json(fed.url("/v1/rounds"))
    assert {r["round"]: r["participants"] for r in records} == expected
    assert {r["round"]: r["sampled"] for r in records} == expected
    for r in records:
        assert r["closed_by"] == "all_submitted" and r["not_submitted"] == [], r
        for s in fed.scenarios:
            assert (r["clients"][s]["num_samples"] is not None) == (s in expected[r["round"]])
            if r["round"] < rounds:  # evaluated at the start of the next round, sampled or not
                assert r["clients"][s]["eval"]["valid"]["ctr"]["n"] == 200
    sat_out = [s for s in fed.scenarios if s not in expected[1]]
    assert (
        "did not sample this client" in processes.procs[1 + fed.scenarios.index(sat_out[0])].log()
    )
    agg.stop()
    assert agg.proc.returncode == 0, agg.tail()

    captured: dict[str, dict[str, torch.Tensor]] = {}

    def on_round(r: int, sim_clients) -> None:
        if r == rounds:
            captured.update({s: c.full_state() for s, c in sim_clients.items()})

    with torch_threads(1):
        run_simulation(spec.to_simulation(fed.data), log=lambda _: None, on_round=on_round)
    ckpt = CheckpointStore(fed.state_dir / "checkpoints").load_latest()
    strategy = Strategy(spec.federation(), spec.initial_state())
    strategy.load_state_dict(ckpt.tensors, ckpt.state["strategy"])
    for s in fed.scenarios:
        assert max_abs_diff(strategy.payload(s), captured[s]) <= 1e-6, s
        local = load_file(str(fed.client_state_dir(s) / CLIENT_STATE_FILE))
        assert set(local) == set(captured[s])
        assert max_abs_diff(local, captured[s]) <= 1e-6, s
