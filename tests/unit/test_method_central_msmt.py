"""central-msmt: one scenario-aware MMoE on the pooled data (scenario embedding in the
gates, towers per scenario); simulation only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.methods import check_networked
from msmtrec.model import preset
from msmtrec.model.scenario_mmoe import build_scenario_model, with_scenario
from msmtrec.simulation import SimulationConfig, run_simulation
from msmtrec.training import TrainConfig, Trainer

NAMES = ("S0", "S1", "S2")


def _pooled(splits) -> ScenarioData:
    return ScenarioData.concat([with_scenario(splits[s].train, i) for i, s in enumerate(NAMES)])


def _tower_state(model, scenario: str) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in model.scenario_towers(scenario).state_dict().items()}


def test_towers_start_equal_and_learn_per_scenario(small_splits):
    model = build_scenario_model(ALIEXPRESS, preset("small", template="none"), NAMES, 0)
    start = {s: _tower_state(model, s) for s in NAMES}
    assert all(torch.equal(start["S0"][n], start["S1"][n]) for n in start["S0"])
    scen_before = model.scenario_embedding.weight.detach().clone()
    trainer = Trainer(model, TrainConfig(batch_size=256))
    trainer.fit(_pooled(small_splits), seed=0)
    after = {s: _tower_state(model, s) for s in NAMES}
    head = "ctr.head.weight"
    for s in NAMES:
        assert not torch.equal(after[s][head], start[s][head]), s
    assert not torch.equal(after["S0"][head], after["S1"][head])
    assert not torch.equal(model.scenario_embedding.weight, scen_before)
    # a row's prediction depends on the scenario it is said to come from
    valid = small_splits["S0"].valid
    p0 = trainer.predict(with_scenario(valid, 0))
    p1 = trainer.predict(with_scenario(valid, 1))
    assert not np.allclose(p0, p1)
    assert trainer.evaluate(with_scenario(valid, 0))["ctr"]["auc"] > 0.6


def test_a_scenario_with_one_row_in_a_training_batch_works(small_splits):
    model = build_scenario_model(ALIEXPRESS, preset("small", template="none"), NAMES, 0)
    rows = with_scenario(small_splits["S0"].train.slice(0, 9), 0)
    rows.categorical[-1, -1] = 2  # one row of S2, none of S1
    model.train()
    out = model(torch.from_numpy(rows.categorical), torch.from_numpy(rows.numerical))
    assert out.shape == (9, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.scenario_towers("S1")["ctr"].head.weight.grad is None
    assert model.scenario_towers("S2")["ctr"].head.weight.grad is not None


def test_simulation_evaluates_every_scenario_and_is_refused_networked(tmp_path, small_splits):
    cfg = SimulationConfig(
        tmp_path, method="central-msmt", rounds=2, seed=0, train=TrainConfig(batch_size=256)
    )
    res = run_simulation(cfg, splits=small_splits, log=lambda _m: None)
    assert [r.round for r in res.history] == [1, 2]
    assert set(res.best.test) == set(NAMES)
    assert all(r.train_loss.keys() == {"pooled"} for r in res.history)
    assert res.best.mean_valid_auc > 0.6
    with pytest.raises(ValueError, match="runs only in `msmtrec simulate`"):
        check_networked("central-msmt")


def test_bad_scenario_lists_are_refused():
    with pytest.raises(ValueError, match="at least one scenario"):
        build_scenario_model(ALIEXPRESS, preset("small"), (), 0)
    with pytest.raises(ValueError, match="repeat"):
        build_scenario_model(ALIEXPRESS, preset("small"), ("A", "A"), 0)
