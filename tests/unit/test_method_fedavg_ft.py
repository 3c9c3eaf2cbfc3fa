"""fedavg-ft: FedAvg for what is sent; a fine-tuned copy, epochs chosen on validation, for
what is evaluated and published."""

from __future__ import annotations

import dataclasses

import torch
from helpers.methods import clients_for, play_round

from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec.simulation import SimulationConfig, load_splits, run_simulation
from msmtrec.training import TrainConfig
from msmtrec.training.metrics import mean_auc


def test_zero_finetune_epochs_is_exactly_fedavg(tmp_path):
    synthesize(tmp_path, SynthConfig(scenarios=("A", "B"), train_rows=800, test_rows=300, seed=2))
    splits = load_splits(tmp_path, None, 0.1)

    def history(method: str, **overrides) -> list[dict]:
        cfg = SimulationConfig(
            tmp_path, method=method, rounds=2, seed=1, train=TrainConfig(batch_size=256),
            federation_overrides=overrides,
        )  # fmt: skip
        res = run_simulation(cfg, splits=splits, log=lambda _m: None).to_dict()["history"]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in res]

    fedavg = history("fedavg")
    assert history("fedavg-ft", finetune_epochs=0) == fedavg
    assert history("fedavg-ft", finetune_epochs=1) != fedavg


def test_sends_fedavg_evaluates_a_validation_chosen_copy(small_splits):
    ft, s_ft = clients_for("fedavg-ft", small_splits, finetune_epochs=2)
    fedavg, s_fedavg = clients_for("fedavg", small_splits)
    a, b = play_round(ft, s_ft, 1), play_round(fedavg, s_fedavg, 1)
    runtime = ft["S0"]
    before = {n: t.clone() for n, t in runtime.model.state_dict().items()}
    tuned = runtime.evaluated_model()
    metrics = runtime.evaluate("valid")
    # evaluation fine-tunes a copy; the federated model is untouched
    assert all(torch.equal(before[n], t) for n, t in runtime.model.state_dict().items())
    assert tuned is not runtime.model and runtime.evaluated_model() is tuned  # cached
    assert runtime.hooks.chosen_epochs in (0, 1, 2)
    untuned = fedavg["S0"].evaluate("valid")
    assert mean_auc({"S0": metrics}) >= mean_auc({"S0": untuned})  # epoch 0 is a candidate
    # and the next round sends what FedAvg sends
    a, b = play_round(ft, s_ft, 2), play_round(fedavg, s_fedavg, 2)
    for s in a:
        assert all(torch.equal(a[s].params[n], b[s].params[n]) for n in a[s].params)
    assert runtime.evaluated_model() is not tuned  # a new payload, a new fine-tuned copy


def test_the_choice_never_reads_the_test_split(small_splits):
    """Same data but another test split: same chosen epochs, same fine-tuned weights."""
    other = dataclasses.replace(small_splits["S0"], test=small_splits["S1"].test)
    results = []
    for splits in ({"S0": small_splits["S0"]}, {"S0": other}):
        clients, strategy = clients_for("fedavg-ft", splits, finetune_epochs=2)
        play_round(clients, strategy, 1)
        runtime = clients["S0"]
        results.append((runtime.evaluated_model().state_dict(), runtime.hooks.chosen_epochs))
    (sa, ea), (sb, eb) = results
    assert ea == eb
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
