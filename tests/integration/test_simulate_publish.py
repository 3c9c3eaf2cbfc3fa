"""``msmtrec simulate --publish-to`` builds a registry that ``msmtrec gateway`` serves."""

from __future__ import annotations

import httpx
import torch
from conftest import make_splits
from gateway_support import eager_probs, fixture_instances, running_gateway, wait_ready

from msmtrec.data.loader import write_split
from msmtrec.registry import ModelRegistry
from msmtrec_app.cli import main


def test_simulate_publishes_every_round_and_the_gateway_serves_it(tmp_path, capsys):
    data = tmp_path / "data"
    for name, sp in make_splits(num_scenarios=2, rows=600, seed=0).items():
        train = type(sp.train).concat([sp.train, sp.valid])
        write_split(train, data / name / "train.csv")
        write_split(sp.test, data / name / "test.csv")
    root = tmp_path / "registry"
    code = main([
        "simulate", "--data", str(data), "--rounds", "2", "--preset", "small",
        "--batch-size", "256", "--publish-to", str(root), "--out", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 0
    assert "published S0" in capsys.readouterr().out
    reg = ModelRegistry(root)
    assert reg.scenarios() == ["S0", "S1"]
    instances = fixture_instances("test")
    for s in ("S0", "S1"):
        versions = reg.versions(s)
        assert [v.round for v in versions] == [1, 2]
        latest = reg.latest(s)
        assert latest.version == versions[-1].version
        meta = latest.metadata
        assert meta["extra"]["source"] == "simulation" and meta["preset"] == "small"
        for split in ("valid", "test"):
            assert set(latest.metrics[split]) == {"ctr", "ctcvr"}
            assert 0.0 <= latest.metrics[split]["ctr"]["auc"] <= 1.0
    with running_gateway(root) as base, httpx.Client(base_url=base) as c:
        ready = wait_ready(c)
        assert ready["scenarios"] == {s: reg.latest(s).version for s in ("S0", "S1")}
        for s in ("S0", "S1"):
            resp = c.post(f"/v1/scenarios/{s}/predict", json={"instances": instances})
            assert resp.status_code == 200
            want = eager_probs(reg.load(s).model, instances)
            got = torch.tensor(resp.json()["predictions"]["ctcvr"], dtype=torch.float64)
            assert (got - want[:, 1].double()).abs().max() <= 1e-6
