"""A round that cannot be closed stops the aggregator (exit 3) instead of hanging it.

The full disk is simulated by a checkpoint store whose write fails the way safetensors
fails on a full disk (its own ``SafetensorError``, not an OSError): a size-limited mount is
not available to the test suite. Everything else is real: the Federation, its controller
thread in a running Aggregator, the round machine.
"""

from __future__ import annotations

import pytest
from helpers.processes import free_port, wait_until
from safetensors import SafetensorError

from aggregator.checkpoint import CheckpointStore
from aggregator.closing import CHECKPOINT_ATTEMPTS, CheckpointFailure
from aggregator.federation import Federation
from aggregator.rounds import Phase
from aggregator.server import EXIT_CHECKPOINT, Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import decode, encode
from msmtrec.spec import FederationSpec
from servicekit.auth import make_tokens


class FullDiskStore(CheckpointStore):
    """A real store whose writes fail like safetensors' on a full disk."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.attempts = 0

    def save(self, *args, **kwargs):
        self.attempts += 1
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )


def _submit_all(fed: Federation, scenarios=("A", "B")) -> None:
    """Join (if needed), open the round and submit for every scenario, without a tick to close."""
    for s in scenarios:
        if s not in fed.machine.clients:
            fed.join(s, fed.spec_digest, fed.signature)
    wait_until(lambda: fed.status().phase is Phase.OPEN, 10, "the round to open")
    for i, s in enumerate(scenarios):
        payload = fed.payload(s).encoded
        start = decode(payload.specs, payload.buffer)
        enc = encode({n: t + 0.01 * (i + 1) for n, t in start.items()}, fed.strategy.names)
        ticket = fed.begin_submission(
            s, fed.status().round, 10, {"train_loss": 0.5}, enc.specs, len(enc.buffer)
        )
        fed.complete_submission(ticket, enc.buffer, len(enc.buffer))


def test_a_checkpoint_that_cannot_be_written_is_retried_then_a_close_failure(tmp_path):
    store = FullDiskStore(tmp_path / "ckpt")
    fed = Federation(FederationSpec(rounds=2), ["A", "B"], store, min_clients=2, start_wait=0)
    fed.closer.retry_seconds = 0.0
    for s in ("A", "B"):
        fed.join(s, fed.spec_digest, fed.signature)
    fed.tick()  # opens round 1
    _submit_all(fed)
    with pytest.raises(CheckpointFailure, match="could not write the checkpoint of round 1"):
        fed.tick()
    assert store.attempts == CHECKPOINT_ATTEMPTS
    assert store.rounds() == []  # nothing claims a round that is not durable
    # a restart (a fresh Federation over the same directory) resumes before round 1
    again = Federation(
        FederationSpec(rounds=2), ["A", "B"], CheckpointStore(store.dir), min_clients=2
    )
    assert again.resumed_from is None and again.status().round == 1


def test_the_controller_exits_3_when_a_round_cannot_be_closed(tmp_path):
    paths = make_tokens(["A", "B"], tmp_path / "tokens")
    settings = AggregatorSettings(
        tokens_file=paths["tokens"],
        port=free_port(),
        status_port=0,
        state_dir=tmp_path / "aggregator",
        rounds=2,
        min_clients=2,
        start_wait_seconds=0,
        round_deadline_seconds=120,
        threads=1,
    )
    agg = Aggregator(settings)
    store = FullDiskStore(settings.state_dir / "checkpoints")
    agg.federation.closer.store = store
    agg.federation.closer.retry_seconds = 0.0
    agg.start()
    try:
        _submit_all(agg.federation)
        assert agg.stop_event.wait(30), "the controller did not stop the process"
        assert agg.exit_code == EXIT_CHECKPOINT
        assert store.attempts == CHECKPOINT_ATTEMPTS
        agg.controller.join(5)
        assert not agg.controller.is_alive()  # it stopped; nothing is left ticking
    finally:
        assert agg.stop(grace=0) == EXIT_CHECKPOINT
