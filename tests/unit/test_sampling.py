"""Partial participation: the sample of a round (deterministic by seed, the same wherever it
is drawn), its settings checks, and the round machine waiting for the sampled clients only."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from aggregator.rounds import Action, Phase, RoundMachine, RoundRules
from msmtrec.federation.config import FederationConfig, resolve_method
from msmtrec.federation.sampling import clients_per_round, round_participants
from msmtrec.spec import FederationSpec

TEN = [f"S{i}" for i in range(10)]


def test_the_sample_is_a_function_of_seed_and_round_only():
    cfg = FederationConfig(clients_per_round=3)
    first = [round_participants(TEN, r, 7, cfg) for r in range(1, 21)]
    assert first == [round_participants(reversed(TEN), r, 7, cfg) for r in range(1, 21)]
    assert all(len(s) == 3 and list(s) == sorted(s) and set(s) <= set(TEN) for s in first)
    assert len(set(first)) > 10  # it varies from round to round
    assert first != [round_participants(TEN, r, 8, cfg) for r in range(1, 21)]  # and by seed
    # another process (another PYTHONHASHSEED) draws the very same sample
    code = (
        "from msmtrec.federation.config import FederationConfig as F\n"
        "from msmtrec.federation.sampling import round_participants as p\n"
        f"print([p({TEN!r}, r, 7, F(clients_per_round=3)) for r in range(1, 21)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout  # fmt: skip
    assert out.strip() == repr(first)


def test_how_many_a_round_samples():
    assert clients_per_round(FederationConfig(), 5) == 5
    assert clients_per_round(FederationConfig(clients_per_round=2), 5) == 2
    assert clients_per_round(FederationConfig(clients_per_round=9), 5) == 5
    assert clients_per_round(FederationConfig(client_fraction=0.3), 10) == 3
    assert clients_per_round(FederationConfig(client_fraction=0.25), 10) == 3  # rounded up
    assert clients_per_round(FederationConfig(client_fraction=0.01), 10) == 1
    assert round_participants(TEN, 1, 0, FederationConfig()) == tuple(TEN)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clients_per_round": 0}, "clients_per_round"),
        ({"clients_per_round": 1.5}, "clients_per_round"),
        ({"client_fraction": 0.0}, "client_fraction"),
        ({"client_fraction": 1.5}, "client_fraction"),
        ({"clients_per_round": 2, "client_fraction": 0.5}, "not both"),
    ],
)
def test_bad_sampling_settings_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        FederationConfig(**changes)


def test_sampling_leaves_the_spec_digest_of_full_participation_unchanged():
    assert "clients_per_round" not in FederationConfig().to_dict()
    sampled = FederationSpec(federation_overrides={"clients_per_round": 2})
    assert sampled.digest() != FederationSpec().digest()
    assert resolve_method("pfmsmtrec", client_fraction=0.5).client_fraction == 0.5


RULES = RoundRules(
    expected=("A", "B", "C", "D"),
    total_rounds=3,
    min_clients=3,
    start_wait=10.0,
    deadline=60.0,
    participants=lambda r: ("A", "B") if r % 2 else ("C", "D"),
)


def test_the_round_waits_for_the_sampled_live_clients_only():
    m = RoundMachine(RULES, 0, 0.0)
    for s in "ABCD":
        m.join(s, 0.0)
    assert m.decide(0.0) is Action.OPEN
    m.open_round(0.0)
    assert m.sampled == ("A", "B") and m.needed() == 2  # min(min_clients, sample)
    assert m.eligible("A") and not m.eligible("C")
    m.record_submission("A", "x", 1.0)
    assert m.decide(1.0) is Action.NONE
    assert "1/2 live sampled clients submitted (waiting for B)" in m.message(1.0)
    assert "sampled A, B" in m.message(1.0)
    m.record_submission("B", "y", 2.0)
    assert m.decide(2.0) is Action.CLOSE and m.closing_reason == "all_submitted"
    m.begin_close()
    m.finish_close(3.0)
    assert m.phase is Phase.OPEN and m.round == 2 and m.sampled == ("C", "D")
    # C, sampled, never submits: at the deadline D alone is short of min(3, 2) = 2
    m.record_submission("D", "z", 4.0)
    assert m.decide(62.9) is Action.NONE
    assert m.decide(63.0) is Action.EXTEND
    # without sampling nothing changes
    plain = RoundMachine(replace(RULES, participants=None), 0, 0.0)
    for s in "ABCD":
        plain.join(s, 0.0)
    plain.open_round(0.0)
    assert plain.sampled is None and plain.needed() == 3 and plain.eligible("C")
