"""The aggregator's state directory: bounded growth (history retention, checkpoints that
carry only their last few records), the advisory lock, and a start-up cleanup that leaves
another live process's temp files alone (issue #16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aggregator.checkpoint import CheckpointStore
from aggregator.federation import Federation
from aggregator.history import CHECKPOINT_RECORDS
from aggregator.rounds import Phase
from aggregator.statelock import StateDirBusy, StateDirLock
from msmtrec.codec import decode, encode
from msmtrec.spec import FederationSpec


def _federation(tmp_path, spec: FederationSpec, retention: int) -> Federation:
    return Federation(
        spec,
        ["A", "B"],
        CheckpointStore(tmp_path / "ckpt", keep=2),
        min_clients=2,
        start_wait=0,
        history_path=tmp_path / "history.json",
        history_rounds=retention,
    )


def _play_round(fed: Federation, shift: float) -> None:
    for s in ("A", "B"):
        if s not in fed.machine.clients:
            fed.join(s, fed.spec_digest, fed.signature)
    fed.tick()
    assert fed.status().phase is Phase.OPEN
    for i, s in enumerate(("A", "B")):
        payload = fed.payload(s).encoded
        start = decode(payload.specs, payload.buffer)
        enc = encode({n: t + shift * (i + 1) for n, t in start.items()}, fed.strategy.names)
        ticket = fed.begin_submission(
            s, fed.status().round, 10, {"train_loss": 0.5}, enc.specs, len(enc.buffer)
        )
        fed.complete_submission(ticket, enc.buffer, len(enc.buffer))
    fed.tick()


def test_checkpoints_carry_a_bounded_tail_and_history_json_keeps_its_retention(tmp_path):
    """12 rounds with a retention of 10: every checkpoint holds at most CHECKPOINT_RECORDS
    records (its own round last), history.json and /v1/rounds hold the last 10, and a
    restart rebuilds those 10 — the older ones from history.json, the tail from the
    checkpoint — with the evaluation a client reported after the checkpoint."""
    spec = FederationSpec(rounds=12)
    fed = _federation(tmp_path, spec, retention=10)
    sizes = []
    for r in range(1, 13):
        _play_round(fed, 0.001 * r)
        sizes.append(len(fed.store.load_latest().state["history"]))
    assert fed.status().completed_rounds == 12
    assert sizes == [min(r, CHECKPOINT_RECORDS) for r in range(1, 13)]
    ckpt = fed.store.load_latest()
    assert [h["round"] for h in ckpt.state["history"]] == list(range(5, 13))
    on_disk = json.loads((tmp_path / "history.json").read_text())
    assert [h["round"] for h in on_disk] == list(range(3, 13))
    assert [r.round for r in fed.rounds_list()] == list(range(3, 13))
    fed.report_metrics("A", 12, {"valid": {"ctr": {"auc": 0.7, "logloss": 0.3, "n": 10}}}, {})
    before = [r.model_dump() for r in fed.rounds_list()]

    again = _federation(tmp_path, spec, retention=10)
    assert again.resumed_from == 12
    assert [r.model_dump() for r in again.rounds_list()] == before
    assert again.rounds_list()[-1].clients["A"].eval["valid"]["ctr"].auc == 0.7


def test_a_history_json_of_another_run_is_not_merged(tmp_path):
    """Older records come from history.json only when it agrees with the checkpoint on the
    rounds both hold; otherwise the restart keeps the checkpoint's tail alone."""
    spec = FederationSpec(rounds=10)
    fed = _federation(tmp_path, spec, retention=100)
    for r in range(1, 11):
        _play_round(fed, 0.001 * r)
    doc = json.loads((tmp_path / "history.json").read_text())
    for rec in doc:
        rec["state_checksum"] = "0" * 64  # another run's records
    (tmp_path / "history.json").write_text(json.dumps(doc))
    again = _federation(tmp_path, spec, retention=100)
    assert [r.round for r in again.rounds_list()] == list(range(3, 11))


def test_history_json_that_cannot_be_written_is_reported_not_fatal(tmp_path):
    """A history.json the disk refuses is logged and shown (storage_problem) while the
    rounds go on; the next successful write clears it."""
    spec = FederationSpec(rounds=3)
    fed = _federation(tmp_path, spec, retention=100)
    _play_round(fed, 0.001)
    (tmp_path / "history.json").unlink()
    (tmp_path / "history.json").mkdir()  # os.replace onto a directory fails (an OSError)
    _play_round(fed, 0.002)
    assert fed.status().completed_rounds == 2
    assert "cannot write history.json" in (fed.storage_problem() or "")
    (tmp_path / "history.json").rmdir()
    _play_round(fed, 0.003)
    assert fed.storage_problem() is None
    assert [h["round"] for h in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]


def test_the_state_dir_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = StateDirLock(tmp_path).acquire()
    with pytest.raises(StateDirBusy, match=rf"in use by another aggregator \(pid {os.getpid()}"):
        StateDirLock(tmp_path).acquire()
    # another process is refused too (flock is per open file, so this is the real case)
    probe = (
        "import sys; from aggregator.statelock import StateDirLock, StateDirBusy\n"
        "try:\n    StateDirLock(sys.argv[1]).acquire()\nexcept StateDirBusy:\n    sys.exit(7)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)]).returncode == 7
    first.release()
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)]).returncode == 0
    StateDirLock(tmp_path).acquire().release()


def test_stale_temp_cleanup_leaves_a_live_writers_file_alone(tmp_path):
    """A temp file named after a live process (another writer) survives start-up cleanup;
    one of a dead process, or of this process, is removed."""
    store = CheckpointStore(tmp_path)
    store.save(1, {"a": __import__("torch").zeros(2)}, {"round": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "live": f".checkpoint-000002.safetensors.tmp-{live.pid}",
            "dead": f".checkpoint-000002.safetensors.tmp-{dead.pid}",
            "own": f".checkpoint-000002.safetensors.tmp-{os.getpid()}",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        assert store.load_latest().round == 1
        left = {p.name for p in tmp_path.iterdir() if ".tmp-" in p.name}
        assert left == {names["live"]}
    finally:
        live.kill()
        live.wait()
