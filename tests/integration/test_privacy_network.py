"""Differential privacy over the network (issue #14): real aggregator and client processes.

S0 trains with an ε budget planned over every round; S1 with a fixed noise multiplier and a
cap that one round fits and two do not. ε spent shows in each round record of the status API,
in ``/metrics`` and in the registry metadata of every published model; S1 refuses round 2,
says why and exits 3, and the federation finishes with S0.
"""

from __future__ import annotations

import math

from helpers.federation import Federation
from helpers.processes import get_json

from msmtrec.registry import ModelRegistry
from msmtrec.training.privacy import PrivacyAccountant

START = 120


def _metrics_text(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text


def test_epsilon_is_reported_everywhere_and_an_exhausted_budget_is_refused(tmp_path, processes):
    fed = Federation.create(tmp_path, scenarios=("S0", "S1"))
    registry = tmp_path / "registry"
    # S1: 1800 rows, batch 512 → rate 512/1800, 4 private steps a round; σ 1.0
    acc = PrivacyAccountant(delta=1 / 1800)
    one, two = acc.epsilon_after(1.0, 512 / 1800, 4), acc.epsilon_after(1.0, 512 / 1800, 8)
    cap = (one + two) / 2
    agg = processes.launch(
        "aggregator",
        fed.aggregator_args(
            rounds=2, exit_when_done=False, min_clients=1, round_deadline_seconds=20
        ),
    )
    s0 = processes.launch("S0", fed.client_args("S0", registry=registry, dp_epsilon=8))
    s1 = processes.launch(
        "S1",
        fed.client_args(
            "S1", registry=registry, dp_epsilon=cap, dp_noise_multiplier=1.0, dp_noise_seed=5
        ),
    )
    assert s0.wait(START) == 0, s0.tail()
    assert s1.wait(START) == 3, s1.tail()
    log = s1.tail(60)
    assert "refusing to train" in log and "round 2 would spend ε" in log, log

    rounds = get_json(fed.url("/v1/rounds"))
    assert [r["round"] for r in rounds] == [1, 2]
    first, second = rounds
    assert set(first["dp_epsilon"]) == {"S0", "S1"} and set(second["dp_epsilon"]) == {"S0"}
    assert math.isclose(first["dp_epsilon"]["S1"], one, rel_tol=1e-9)
    assert 0 < first["dp_epsilon"]["S0"] < second["dp_epsilon"]["S0"] <= 8.0
    assert second["dp_epsilon"]["S0"] >= 7.9  # the budget was planned over both rounds
    c = first["clients"]["S1"]["metrics"]
    assert c["dp_epsilon_budget"] == cap and c["dp_noise_multiplier"] == 1.0
    assert math.isclose(c["dp_delta"], 1 / 1800)
    assert "train_loss" not in c  # the unclipped loss is not private: not sent

    metrics = _metrics_text(fed.url("/metrics"))
    assert f'msmtrec_client_dp_epsilon{{scenario="S0"}} {second["dp_epsilon"]["S0"]!r}' in metrics

    versions = ModelRegistry(registry).versions("S0")
    assert versions
    for v in versions:  # every published model says what its training spent
        p = v.metadata["privacy"]
        assert p["accountant"] == "opacus-rdp" and p["epsilon_budget"] == 8.0
        assert 0 < p["epsilon"] <= 8.0 and p["delta"] == 1 / 1800
    assert ModelRegistry(registry).versions("S1")[0].metadata["privacy"]["epsilon"] > 0
    agg.stop()
