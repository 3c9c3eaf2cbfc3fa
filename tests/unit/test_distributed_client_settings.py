"""Start-up checks of a client run as several processes (scenario_client/distributed.py):
torchrun's variables are read with errors naming them, and the combinations that cannot
work are refused with exit 2 before anything starts."""

from __future__ import annotations

import pytest

from msmtrec.training.distributed import shard
from msmtrec.training.process_group import replica_env
from msmtrec_app.cli import main

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


def test_replica_env_reads_torchrun_variables():
    assert replica_env({}) is None
    assert replica_env(TORCHRUN) == (1, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"RANK": None}, "RANK is not set"),
        ({"MASTER_ADDR": " "}, "MASTER_ADDR is not set"),
        ({"RANK": "one"}, "must be integers"),
        ({"RANK": "2"}, r"RANK 2 must be in 0\.\.WORLD_SIZE-1 \(1\)"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE 0 must be >= 1"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT 70000 is not a port"),
    ],
)
def test_replica_env_errors_name_the_variable(change, message):
    env = {**TORCHRUN, **change}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        replica_env(env)


def test_shards_stride_a_batch_and_cover_it_once():
    import torch

    batch = torch.tensor([7, 3, 9, 1, 4])
    parts = [shard(batch, r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[7, 1], [3, 4], [9]]
    assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())
    assert shard(batch[:1], 2, 3).numel() == 0  # fewer rows than replicas: an empty shard


BASE = ["client", "--scenario", "NL", "--data", "/nonexistent", "--insecure"]


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({}, ["--distributed"], "--distributed needs torchrun"),
        (TORCHRUN, [], "pass --distributed"),
        (TORCHRUN, ["--distributed", "--dp-epsilon", "3"], "differential privacy"),
        (TORCHRUN, ["--distributed", "--device", "cuda"], None),  # no CUDA here, or refused
        ({**TORCHRUN, "RANK": "5"}, ["--distributed"], "RANK 5 must be in"),
    ],
)
def test_impossible_combinations_exit_2_before_starting(monkeypatch, capsys, env, extra, message):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*BASE, *extra]) == 2
    out = capsys.readouterr().out
    assert "invalid settings" in out
    if message:
        assert message in out
