import copy
import random

import pytest
import torch

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_method
from msmtrec.federation.groups import Group, classify
from msmtrec.federation.strategy import AggregationError, ClientUpdate, Strategy
from msmtrec.model import build_model, preset

CLIENTS = ["ES", "FR", "NL", "US"]


def _strategy(method="pfmsmtrec-v1", **overrides):
    """pfmsmtrec-v1: FedHCA²'s additive forms, which most tests here pin down."""
    cfg = resolve_method(method, **overrides)
    model = build_model(ALIEXPRESS, preset("small", template=cfg.template), seed=0)
    return Strategy(cfg, model.state_dict())


def _random_updates(strategy, seed, scale=0.01, ids=CLIENTS):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, cid in enumerate(ids):
        start = strategy.payload(cid)
        params = {n: t + scale * torch.randn(t.shape, generator=g) for n, t in start.items()}
        out.append(ClientUpdate(cid, 100 * (i + 1), params))
    return out


def test_fedavg_is_the_sample_weighted_mean_and_everyone_gets_it():
    s = _strategy("fedavg")
    ups = _random_updates(s, 0)
    total = sum(u.num_samples for u in ups)
    out = s.aggregate(ups)
    for n in s.names:
        expected = sum(u.num_samples / total * u.params[n].double() for u in ups).float()
        for cid in CLIENTS:
            torch.testing.assert_close(out[cid][n], expected, rtol=1e-5, atol=1e-6)


def test_global_part_is_fedavg_and_scenario_part_is_personal():
    s = _strategy()
    out = s.aggregate(_random_updates(s, 0))
    g = "experts.layers.0.weight_g"
    sc = "experts.layers.0.weight_s"
    assert all(torch.equal(out["ES"][g], out[c][g]) for c in CLIENTS)
    assert not torch.equal(out["ES"][sc], out["FR"][sc])


def test_personal_expert_update_is_end_plus_weight_times_coordinated_update():
    s = _strategy()
    ups = _random_updates(s, 1)
    out = s.aggregate(ups)
    for u in ups:
        for n in s.expert_names:
            expected = u.params[n] + 0.1 * s.last_expert_update[n]  # a_c = init 0.1
            torch.testing.assert_close(out[u.client_id][n], expected)


def test_interpolating_form_mixes_own_delta_and_coordinated_update():
    """personal_form interp (the default): θ_new = θ_start + (1 − a)Δ_c + a·g, so a = 0 is
    training alone and a = 1 takes the coordinated update in place of one's own."""
    s = _strategy("pfmsmtrec")
    assert s.config.personal_form == "interp"
    starts = {c: {n: t.clone() for n, t in s.payload(c).items()} for c in CLIENTS}
    ups = _random_updates(s, 3)
    out = s.aggregate(ups)
    a = s.config.init_weight  # round one: no hyper step yet
    for u in ups:
        for n in s.expert_names:
            delta = u.params[n] - starts[u.client_id][n]
            expected = starts[u.client_id][n] + (1 - a) * delta + a * s.last_expert_update[n]
            torch.testing.assert_close(out[u.client_id][n], expected, rtol=1e-5, atol=1e-6)


def test_result_does_not_depend_on_arrival_order():
    a, b = _strategy(), _strategy()
    ups = _random_updates(a, 2)
    shuffled = ups[:]
    random.Random(0).shuffle(shuffled)
    out_a, out_b = a.aggregate(ups), b.aggregate(shuffled)
    for cid in CLIENTS:
        for n in a.names:
            assert torch.equal(out_a[cid][n], out_b[cid][n])


def test_client_missing_a_round_keeps_its_start_but_gets_new_global():
    s = _strategy()
    s.aggregate(_random_updates(s, 0))
    before = {n: t.clone() for n, t in s.payload("US").items()}
    s.aggregate(_random_updates(s, 1, ids=["ES", "FR", "NL"]))
    after = s.payload("US")
    for n in s.expert_names + s.tower_names:
        assert torch.equal(before[n], after[n])
    assert not torch.equal(before["experts.layers.0.weight_g"], after["experts.layers.0.weight_g"])


def _surrogate_round(s, targets):
    """Clients whose training lands exactly on their target θ*_c: diff_c = θ^new − θ*_c is
    then the gradient of L_c(θ) = ½‖θ − θ*_c‖² at the server's output."""
    return [ClientUpdate(c, 10, {n: targets[c][n].clone() for n in s.names}) for c in CLIENTS]


def test_closed_form_hypergradient_matches_finite_differences():
    s = _strategy()
    g = torch.Generator().manual_seed(5)
    start = {c: s.payload(c) for c in CLIENTS}
    ends = {
        c: {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in start[c].items()}
        for c in CLIENTS
    }
    s.aggregate(_surrogate_round(s, ends))
    targets = {
        c: {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in s.payload(c).items()}
        for c in CLIENTS
    }

    def loss(c, a_k=None, k=0, b_layer=None, layer=None):
        """L_c at θ^new(a, b) of the last round, varying one weight."""
        total = 0.0
        a = s.effective_a(c)
        b = s.effective_b(c)
        for n in s.expert_names:
            w = torch.tensor(a, dtype=torch.float64)
            if a_k is not None:
                w[k] = a_k
            theta = (
                ends[c][n].double()
                + w.view(-1, *([1] * (ends[c][n].dim() - 1))) * s.last_expert_update[n].double()
            )
            total += 0.5 * float(((theta - targets[c][n].double()) ** 2).sum())
        for n in s.tower_names:
            lw = b[n.rsplit(".", 1)[0]]
            if b_layer is not None and n.rsplit(".", 1)[0] == layer:
                lw = b_layer
            theta = ends[c][n].double() + lw * s.last_attention[c][n].double()
            total += 0.5 * float(((theta - targets[c][n].double()) ** 2).sum())
        return total

    eps = 1e-3
    for c in CLIENTS:
        delta = {n: targets[c][n] - s.payload(c)[n] for n in s.names}
        grad_a, grad_b = s.hyper_gradients(c, delta)
        for k in range(s.num_experts):
            a0 = s.effective_a(c)[k]
            fd = (loss(c, a0 + eps, k) - loss(c, a0 - eps, k)) / (2 * eps)
            assert grad_a[k] == pytest.approx(fd, rel=1e-3, abs=1e-6)
        for layer in s.tower_layers:
            b0 = s.effective_b(c)[layer]
            fd = (
                loss(c, b_layer=b0 + eps, layer=layer) - loss(c, b_layer=b0 - eps, layer=layer)
            ) / (2 * eps)
            assert grad_b[layer] == pytest.approx(fd, rel=1e-3, abs=1e-6)


def test_hyper_step_moves_weights_against_the_gradient_and_not_in_round_one():
    s = _strategy()
    s.aggregate(_random_updates(s, 0))
    assert s.a["ES"] == [0.1] * s.num_experts  # no update in the first round
    # Next round: every client moves further along last round's coordinated update, so the
    # server should have given more of it: a must grow.
    ups = []
    for c in CLIENTS:
        start = s.payload(c)
        params = {n: start[n] + (s.last_expert_update.get(n, 0)) for n in s.names}
        ups.append(ClientUpdate(c, 10, params))
    s.aggregate(ups)
    assert all(v > 0.1 for v in s.a["ES"])


def test_state_dict_round_trip_resumes_identically():
    a = _strategy()
    a.aggregate(_random_updates(a, 0))
    a.aggregate(_random_updates(a, 1, ids=CLIENTS[:3]))
    tensors, meta = a.state_dict()
    b = _strategy()
    b.load_state_dict(copy.deepcopy(tensors), copy.deepcopy(meta))
    ups = _random_updates(a, 2)
    out_a, out_b = a.aggregate(ups), b.aggregate(ups)
    for c in CLIENTS:
        for n in a.names:
            assert torch.equal(out_a[c][n], out_b[c][n])
    assert a.a == b.a and a.b == b.b and a.round == b.round == 3


def test_bad_updates_are_refused_and_change_nothing():
    s = _strategy()
    s.aggregate(_random_updates(s, 0))
    snapshot = s.state_dict()
    good = _random_updates(s, 1)
    bad_cases = []
    u = copy.deepcopy(good)
    u[0].params.pop(s.names[0])
    bad_cases.append((u, "missing"))
    u = copy.deepcopy(good)
    u[1].params["experts.layers.0.weight_s"] = torch.zeros(3, 3)
    bad_cases.append((u, "shape"))
    u = copy.deepcopy(good)
    u[2].params["towers.ctr.head.bias"] = torch.tensor([float("nan")])
    bad_cases.append((u, "NaN"))
    u = copy.deepcopy(good)
    u[2].params["towers.ctr.head.bias"] = u[2].params["towers.ctr.head.bias"].double()
    bad_cases.append((u, "float64"))
    u = copy.deepcopy(good)
    u[3] = ClientUpdate("ES", 10, u[3].params)
    bad_cases.append((u, "duplicate"))
    u = copy.deepcopy(good)
    u[0].num_samples = 0
    bad_cases.append((u, "num_samples"))
    for ups, message in bad_cases:
        with pytest.raises(AggregationError, match=message):
            s.aggregate(ups)
        tensors, meta = s.state_dict()
        assert meta == snapshot[1]
        assert all(torch.equal(tensors[k], snapshot[0][k]) for k in tensors)


def test_aggregation_never_touches_what_stays_on_the_client(small_splits):
    """BN (params and running stats), W_T, embeddings and gates never leave the client and
    are bit-identical before and after the server's payload is loaded."""
    cfg = resolve_method("pfmsmtrec")
    clients = {
        s: ClientRuntime(s, sp, preset("small"), cfg, seed=0) for s, sp in small_splits.items()
    }
    strategy = Strategy(cfg, next(iter(clients.values())).model.state_dict())
    for s, c in clients.items():
        c.receive(strategy.payload(s))
    updates = [c.train_round(1)[0] for c in clients.values()]
    for u in updates:
        for n in u.params:
            assert classify(n) in (Group.GLOBAL, Group.SCENARIO, Group.TOWER), n
    kept = {
        s: {n: t.clone() for n, t in c.full_state().items() if n not in c.sent_names}
        for s, c in clients.items()
    }
    assert any(classify(n) is Group.BN for n in kept["S0"])
    for s, payload in strategy.aggregate(updates).items():
        clients[s].receive(payload)
        after = clients[s].full_state()
        for n, t in kept[s].items():
            assert torch.equal(after[n], t), n


def test_blockwise_coordination_matches_the_stacked_reference(monkeypatch):
    """The server forms the expert deltas block by block (bounded memory, batched over
    clients); the result equals coordinate() on each expert's fully stacked deltas (to
    float32 rounding), and the batched hyper-gradient equals hyper_gradients() client by
    client."""
    import msmtrec.federation.blocks as st

    # many column blocks per expert tensor, and Gram slices that do not divide them
    monkeypatch.setattr(st, "BLOCK_ELEMENTS", 1024)
    monkeypatch.setattr(st, "MIN_BLOCK_COLUMNS", 256)
    monkeypatch.setattr(st, "GRAM_COLUMNS", 100)
    s = _strategy()
    numel = max(s.initial[n][0].numel() for n in s.expert_names)
    assert len(list(st.column_blocks(numel, len(CLIENTS)))) > 3
    s.aggregate(_random_updates(s, 0))  # a first round, so the next one has a hyper step
    ups = sorted(_random_updates(s, 1), key=lambda u: u.client_id)
    ids = [u.client_id for u in ups]
    starts = {c: s.payload(c) for c in ids}
    ends = {u.client_id: u.params for u in ups}
    grams, grad_a = s._expert_statistics(ids, starts, ends, True)
    fast = s._coordinated_ca(ids, starts, ends, grams)
    reference = s._coordinated_reference(ids, starts, ends)
    for n in s.expert_names:
        # the Gram matrix is a float32 product (float64 across column blocks): g agrees with
        # the all-float64 reference to float32 rounding of its largest entries
        scale = float(reference[n].abs().max())
        torch.testing.assert_close(fast[n], reference[n], rtol=1e-5, atol=1e-6 * scale)
    for i, c in enumerate(ids):
        delta = {n: ends[c][n] - starts[c][n] for n in s.names}
        expected = s.hyper_gradients(c, delta)[0]
        assert grad_a[i].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
