"""A round whose aggregation keeps failing is reopened a bounded number of times, then the
aggregator stops (CloseFailure → exit 3), the Strategy rolled back each time."""

from __future__ import annotations

import pytest
import torch

from aggregator.checkpoint import CheckpointStore
from aggregator.closing import CloseFailure, RoundCloser
from aggregator.history import History
from aggregator.intake import Submission
from aggregator.records import ClosingRound
from msmtrec.spec import FederationSpec


def _closing(closer: RoundCloser, poison: bool) -> ClosingRound:
    """Round 1 with two submissions of what a client sends: unchanged (aggregates) or
    with a tensor of the wrong shape (the aggregation raises)."""
    state = closer.spec.initial_state()
    sent = closer.spec.federation().parameter_groups().sent_names(state)
    params = {k: state[k].clone() for k in sent}
    if poison:
        params[sorted(sent)[0]] = torch.zeros(3)
    subs = [
        Submission(s, 1, 100, {"train_loss": 0.5}, dict(params), "d", 1, 0.0) for s in ("A", "B")
    ]
    return ClosingRound(1, subs, 0.0, 1.0, "all_submitted", 0, [], {}, False)


def test_a_failing_aggregation_is_reopened_then_stops(tmp_path):
    spec = FederationSpec(rounds=2, seed=0)
    closer = RoundCloser(spec, CheckpointStore(tmp_path / "ckpt"))
    before = closer.state_digest()
    history = History()
    for attempt in range(1, closer.attempts):
        assert closer.close(_closing(closer, poison=True), history) is None
        assert closer.failed_aggregations == attempt
        assert closer.state_digest() == before  # rolled back
    with pytest.raises(CloseFailure, match="aggregation of round 1 failed 3 times in a row"):
        closer.close(_closing(closer, poison=True), history)
    assert closer.state_digest() == before


def test_a_success_resets_the_count(tmp_path):
    closer = RoundCloser(FederationSpec(rounds=2, seed=0), CheckpointStore(tmp_path / "c"))
    history = History()
    assert closer.close(_closing(closer, poison=True), history) is None
    assert closer.failed_aggregations == 1
    assert closer.close(_closing(closer, poison=False), history) is not None
    assert closer.failed_aggregations == 0
