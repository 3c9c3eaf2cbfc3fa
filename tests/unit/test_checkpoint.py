"""Aggregator persistence: atomic verified checkpoints, fallback, and resume of a federation."""

from __future__ import annotations

import logging

import pytest
import torch

from aggregator.checkpoint import CheckpointStore
from aggregator.federation import Federation
from aggregator.rounds import Phase
from msmtrec.codec import decode, encode
from msmtrec.spec import FederationSpec


def _state(v: float) -> dict[str, torch.Tensor]:
    return {"a": torch.full((3, 2), v), "b": torch.arange(4), "view": torch.zeros(6)[:3]}


def test_save_load_round_trip_and_pruning(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for r in (1, 2, 3):
        store.save(r, _state(float(r)), {"round": r, "history": [{"round": r}]})
    assert store.rounds() == [2, 3]
    ckpt = store.load_latest()
    assert ckpt.round == 3 and ckpt.state == {"round": 3, "history": [{"round": 3}]}
    assert torch.equal(ckpt.tensors["a"], torch.full((3, 2), 3.0))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupted_latest_falls_back_to_the_previous(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path, keep=3)
    store.save(1, _state(1.0), {"round": 1})
    store.save(2, _state(2.0), {"round": 2})
    path = store.path_for(2)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[-5] ^= 0xFF  # inside the tensor bytes: only the checksum notices
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        ckpt = store.load_latest()
    assert ckpt.round == 1 and torch.equal(ckpt.tensors["a"], torch.full((3, 2), 1.0))
    assert "skipping checkpoint" in caplog.text


def test_a_half_written_temp_file_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1.0), {"round": 1})
    (tmp_path / ".checkpoint-000002.safetensors.tmp-123").write_bytes(b"partial")
    assert store.rounds() == [1] and store.load_latest().round == 1


def _federation(tmp_path, spec: FederationSpec) -> Federation:
    return Federation(
        spec,
        ["A", "B"],
        CheckpointStore(tmp_path / "ckpt"),
        min_clients=2,
        start_wait=0,
        history_path=tmp_path / "history.json",
    )


def _play_round(fed: Federation, shift: float) -> None:
    for s in ("A", "B"):
        fed.join(s, fed.spec_digest, fed.signature)
    fed.tick()
    assert fed.status().phase is Phase.OPEN
    for i, s in enumerate(("A", "B")):
        payload = fed.payload(s).encoded
        start = decode(payload.specs, payload.buffer)
        params = {n: t + shift * (i + 1) for n, t in start.items()}
        enc = encode(params, [x.name for x in fed.signature])
        ticket = fed.begin_submission(
            s, fed.status().round, 100 * (i + 1), {"train_loss": 0.5}, enc.specs, len(enc.buffer)
        )
        fed.complete_submission(ticket, enc.buffer, len(enc.buffer))
    fed.tick()


def test_federation_resumes_from_its_checkpoint_with_identical_state(tmp_path):
    spec = FederationSpec(rounds=3)
    fed = _federation(tmp_path, spec)
    _play_round(fed, 0.01)
    assert fed.status().completed_rounds == 1
    digest, history = fed.strategy_checksum, fed.rounds_list()
    fed.report_metrics("A", 1, {"valid": {"ctr": {"auc": 0.7, "logloss": 0.3, "n": 10}}}, {})

    again = _federation(tmp_path, spec)
    assert again.resumed_from == 1 and again.strategy_checksum == digest
    assert again.status().phase is Phase.WAITING and again.status().round == 2
    resumed = again.rounds_list()
    assert [r.round for r in resumed] == [r.round for r in history] == [1]
    assert resumed[0].clients["A"].eval["valid"]["ctr"].auc == 0.7  # sidecar merged
    _play_round(again, 0.02)
    assert again.status().completed_rounds == 2


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    _play_round(_federation(tmp_path, FederationSpec(rounds=2, seed=0)), 0.01)
    with pytest.raises(ValueError, match="other settings"):
        _federation(tmp_path, FederationSpec(rounds=2, seed=1))
    # more rounds than before is the same federation, continued
    assert _federation(tmp_path, FederationSpec(rounds=5, seed=0)).resumed_from == 1
