"""Ditto: the global copy trains and is sent as FedAvg's; the personal model is evaluated,
published, pulled towards the global model by λ, and kept in the client's local state."""

from __future__ import annotations

import pytest
import torch
from helpers.methods import TRAIN, clients_for, play_round

from msmtrec.federation.client import ClientRuntime
from msmtrec.registry import ModelRegistry
from msmtrec.training import Trainer


def _distance(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> float:
    """‖v − w_global‖ over the shared *parameters* (BatchNorm running statistics are shared
    by FedAvg too, but they are buffers: no penalty applies to them)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    shared = [n for n in anchor if n in params]
    assert shared
    return sum(float((params[n] - anchor[n]).pow(2).sum()) for n in shared) ** 0.5


def test_sends_what_fedavg_sends_and_trains_it_identically(small_splits):
    ditto, s_ditto = clients_for("ditto", small_splits)
    fedavg, s_fedavg = clients_for("fedavg", small_splits)
    assert ditto["S0"].sent_names == fedavg["S0"].sent_names
    for r in (1, 2):
        a, b = play_round(ditto, s_ditto, r), play_round(fedavg, s_fedavg, r)
        for s in a:
            assert all(torch.equal(a[s].params[n], b[s].params[n]) for n in a[s].params)


def test_the_personal_model_differs_and_is_what_is_evaluated(small_splits):
    clients, strategy = clients_for("ditto", small_splits)
    play_round(clients, strategy, 1)
    runtime = clients["S0"]
    personal = runtime.evaluated_model()
    assert personal is not runtime.model
    name = "towers.ctr.head.weight"
    assert not torch.equal(personal.state_dict()[name], runtime.model.state_dict()[name])
    valid = small_splits["S0"].valid
    assert runtime.evaluate("valid") == Trainer(personal, TRAIN).evaluate(valid)
    assert runtime.evaluate("valid") != Trainer(runtime.model, TRAIN).evaluate(valid)


def test_a_large_lambda_pulls_the_personal_model_to_the_global(small_splits):
    one = {"S0": small_splits["S0"]}
    distances = {}
    for lam in (0.0, 1.0, 1e4):
        clients, _ = clients_for("ditto", one, ditto_lambda=lam)
        runtime = clients["S0"]
        anchor = {n: t.clone() for n, t in runtime.anchor.items()}
        runtime.train_round(1)
        distances[lam] = _distance(runtime.evaluated_model(), anchor)
    assert distances[0.0] > distances[1.0] > distances[1e4]
    # Adam normalises the penalty's gradient, so v hovers within a few steps' size of
    # w_global rather than on it: far closer than the unpenalised drift all the same
    assert distances[1e4] < 0.2 * distances[0.0]


def test_the_personal_model_is_saved_and_restored_with_the_local_state(small_splits):
    clients, strategy = clients_for("ditto", small_splits)
    play_round(clients, strategy, 1)
    runtime = clients["S0"]
    state = runtime.full_state()
    personal = {n for n in state if n.startswith("ditto.")}
    assert personal and {n.removeprefix("ditto.") for n in personal} == set(
        runtime.model.state_dict()
    )
    fresh = ClientRuntime("S0", small_splits["S0"], runtime.model.config, runtime.federation,
                          TRAIN, 0)  # fmt: skip
    assert fresh.evaluate("valid") != runtime.evaluate("valid")
    fresh.load_full_state(state)
    assert fresh.evaluate("valid") == runtime.evaluate("valid")
    with pytest.raises(ValueError, match="lacks Ditto's personal model"):
        fresh.load_full_state({n: t for n, t in state.items() if n not in personal})


def test_the_personal_model_is_what_gets_published(small_splits, tmp_path):
    clients, strategy = clients_for("ditto", small_splits)
    play_round(clients, strategy, 1)
    runtime = clients["S0"]
    registry = ModelRegistry(tmp_path)
    registry.publish("S0", runtime, round=1)
    loaded = registry.load("S0").model.state_dict()
    personal = runtime.evaluated_model().state_dict()
    assert all(torch.equal(loaded[n], personal[n]) for n in personal)
