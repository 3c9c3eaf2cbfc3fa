"""The server's closed-form hyper-gradient against finite differences of a real objective.

tests/unit/test_strategy.py checks the algebra on a quadratic stand-in. Here the objective is the
client's actual loss: the templated MMoE's task BCE on its own training rows, after one real
federated round. The server never sees that loss; it reads the client's next delta instead
(diff_c = −Δ_c). When the client's next local step is one plain gradient step of size η, the
surrogate equals η·∂L/∂a exactly — that is the identity the hyper-gradient rests on, and it is
what this test checks, for every expert weight a_{c,k} and tower weight b_{c,l}.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_method
from msmtrec.federation.strategy import Strategy, tower_layer
from msmtrec.model import preset
from msmtrec.training.trainer import TrainConfig

ETA = 1e-3


def _loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    cat, num, labels = batch
    logits = model(cat, num)
    return F.binary_cross_entropy_with_logits(logits.double(), labels.double())


@pytest.mark.parametrize("form", ["add", "interp"])
def test_surrogate_hypergradient_is_eta_times_the_true_derivative(small_splits, form):
    cfg = resolve_method("pfmsmtrec", personal_form=form, hyper_grad="raw")
    model_cfg = preset("small", template=cfg.template)
    clients = {
        s: ClientRuntime(s, sp, model_cfg, cfg, TrainConfig(lr=3e-3, batch_size=256), seed=0)
        for s, sp in sorted(small_splits.items())
    }
    first = next(iter(clients.values()))
    strategy = Strategy(cfg, first.model.state_dict())
    for s, c in clients.items():
        c.receive(strategy.payload(s))
    ends = {}
    for s, c in clients.items():
        update, _ = c.train_round(1)
        ends[s] = update.params
    for s, payload in strategy.aggregate([_update(s, ends[s]) for s in clients]).items():
        clients[s].receive(payload)

    for s, c in clients.items():
        # No dropout, BatchNorm statistics fixed: L is a function; float64 so that finite
        # differences are exact to many digits.
        model = c.model.double().eval()
        data = c.splits.train
        batch = (
            torch.from_numpy(data.categorical[:512]),
            torch.from_numpy(data.numerical[:512]).double(),
            torch.from_numpy(data.labels[:512]),
        )
        params = dict(model.named_parameters())
        shared = [n for n in strategy.names if n in params]
        model.zero_grad()
        _loss(model, batch).backward()
        # One plain gradient step of the client: Δ_next = −η ∇L over what it sends.
        delta = {n: -ETA * params[n].grad.detach().clone() for n in shared}
        for n in strategy.names:
            delta.setdefault(n, torch.zeros_like(strategy.payload(s)[n]))
        grad_a, grad_b = _server_gradients(strategy, s, delta, form)

        start = {n: params[n].detach().clone() for n in shared}
        prev_delta = strategy.last_delta.get(s, {})

        def loss_at(direction: dict[str, torch.Tensor], step: float, ctx=(model, batch, start)):
            return _loss_along(*ctx, direction, step)

        h = 1e-5
        for k in range(strategy.num_experts):
            direction = {}
            for n in strategy.expert_names:
                u = strategy.last_expert_update[n].clone()
                if form == "interp":
                    u -= prev_delta[n]
                mask = torch.zeros_like(u)
                mask[k] = 1.0
                direction[n] = u * mask
            fd = (loss_at(direction, h) - loss_at(direction, -h)) / (2 * h)
            assert grad_a[k] == pytest.approx(ETA * fd, rel=1e-2, abs=1e-12)
        for layer in strategy.tower_layers:
            direction = {}
            for n in strategy.tower_names:
                if tower_layer(n) == layer:
                    u = strategy.last_attention[s][n].clone()
                    if form == "interp":
                        u -= prev_delta[n]
                    direction[n] = u
            fd = (loss_at(direction, h) - loss_at(direction, -h)) / (2 * h)
            assert grad_b[layer] == pytest.approx(ETA * fd, rel=1e-2, abs=1e-12)


def _loss_along(model, batch, start, direction, step: float) -> float:
    """L at start + step·direction (the model is put back afterwards)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, d in direction.items():
            params[n].copy_(start[n] + step * d)
        value = float(_loss(model, batch))
        for n in direction:
            params[n].copy_(start[n])
    return value


def _update(scenario, params):
    from msmtrec.federation.strategy import ClientUpdate

    return ClientUpdate(scenario, 100, params)


def _server_gradients(strategy: Strategy, scenario: str, delta, form: str):
    """What the server computes from the client's next delta (∂L/∂a, ∂L/∂b)."""
    if form == "add":
        return strategy.hyper_gradients(scenario, delta)
    start = {scenario: strategy.payload(scenario)}
    end = {scenario: {n: start[scenario][n] + delta[n] for n in strategy.names}}
    towers = {scenario: {n: delta[n] for n in strategy.tower_names}}
    grads_a, grads_b = strategy._hyper_gradients_general([scenario], start, end, towers)
    return [float(v) for v in grads_a[0]], grads_b[0]


def test_personalization_weights_differ_between_scenarios_that_differ(small_splits):
    """With the cosine hyper-gradient the clients' weights move apart over rounds (they are
    learned per client), and the round report says how much each learns from the others."""
    from msmtrec.simulation import SimulationConfig, run_simulation

    cfg = SimulationConfig(
        data_dir=None,  # type: ignore[arg-type]
        method="pfmsmtrec",
        rounds=3,
        federation_overrides={"personal_form": "interp", "hyper_grad": "cosine",
                              "attention_temperature": 0.1, "init_weight": 0.5,
                              "hyper_lr": 0.05},
        train=TrainConfig(lr=3e-3, batch_size=256),
    )  # fmt: skip
    res = run_simulation(cfg, splits=small_splits, log=lambda _m: None)
    last = res.history[-1].personalization
    assert last is not None and set(last["clients"]) == set(small_splits)
    a = {c: tuple(round(v, 6) for v in last["a"][c]) for c in last["clients"]}
    assert all(v != (0.5,) * len(v) for v in a.values())  # they moved from the init
    assert len(set(a.values())) == len(a)  # and not in lockstep
    towers = last["learn_from"]["towers"]
    for c in last["clients"]:
        # The attention with a temperature favours the client's own update.
        assert towers[c][c] == max(towers[c].values())
