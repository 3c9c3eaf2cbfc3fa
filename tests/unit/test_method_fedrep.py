"""FedRep: experts are the only tensors sent; a round trains the head, then the body."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.methods import TRAIN, clients_for, play_round

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.groups import Group, classify
from msmtrec.model import build_model, preset
from msmtrec.training import Trainer


def test_sent_tensors_are_the_experts_only(small_splits):
    clients, _ = clients_for("fedrep", small_splits)
    runtime = clients["S0"]
    assert runtime.sent_names
    assert {classify(n) for n in runtime.sent_names} == {Group.GLOBAL}
    assert all(n.startswith("experts.layers.") for n in runtime.sent_names)
    experts = [n for n in runtime.model.state_dict() if classify(n) is Group.GLOBAL]
    assert runtime.sent_names == experts


def test_a_round_is_head_epochs_then_body_epochs(small_splits):
    """The hook does exactly: fit(head only, head_epochs) then fit(body only, local_epochs)."""
    clients, _ = clients_for("fedrep", {"S0": small_splits["S0"]}, head_epochs=2)
    runtime = clients["S0"]
    reference = copy.deepcopy(runtime.model)
    update, _ = runtime.train_round(1)

    body = set(runtime.sent_names)
    head = {n for n, _ in reference.named_parameters() if n not in body}
    trainer = Trainer(reference, TRAIN)
    data = small_splits["S0"].train
    trainer.fit(data, seed=runtime.round_seed(1, "head"), epochs=2, trainable=head)
    trainer.fit(data, seed=runtime.round_seed(1), trainable=body)
    got, want = runtime.model.state_dict(), reference.state_dict()
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert set(update.params) == body


def test_without_head_epochs_the_head_does_not_move(small_splits):
    clients, strategy = clients_for("fedrep", {"S0": small_splits["S0"]}, head_epochs=0)
    runtime = clients["S0"]
    before = {n: p.detach().clone() for n, p in runtime.model.named_parameters()}
    play_round(clients, strategy, 1)
    after = dict(runtime.model.named_parameters())
    for n, p in before.items():
        moved = not torch.equal(p, after[n])
        assert moved == (n in runtime.sent_names), n


def test_heads_stay_personal_across_clients(small_splits):
    clients, strategy = clients_for("fedrep", small_splits)
    play_round(clients, strategy, 1)
    a, b = clients["S0"].model.state_dict(), clients["S1"].model.state_dict()
    name = clients["S0"].sent_names[0]
    assert torch.equal(a[name], b[name])  # the body is the server's average
    assert not torch.equal(a["towers.ctr.head.weight"], b["towers.ctr.head.weight"])
    assert not torch.equal(a["gates.ctr.weight"], b["gates.ctr.weight"])


def test_trainer_trainable_freezes_the_rest_and_restores_it(small_splits):
    model = build_model(ALIEXPRESS, preset("small"), 0)
    trainer = Trainer(model, TRAIN)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    only = {"towers.ctr.head.weight", "towers.ctr.head.bias"}
    trainer.fit(small_splits["S0"].train, seed=0, trainable=only)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in only), n
        assert p.requires_grad, n
    with pytest.raises(ValueError, match="trainable names no parameter"):
        trainer.fit(small_splits["S0"].train, seed=0, trainable={"towers.nope"})
    with pytest.raises(ValueError, match="trainable is empty"):
        trainer.fit(small_splits["S0"].train, seed=0, trainable=set())
