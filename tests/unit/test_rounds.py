"""The round state machine under a fake clock: when rounds open, close, extend, finish."""

from __future__ import annotations

from aggregator.rounds import Action, Phase, RoundMachine, RoundRules

RULES = RoundRules(
    expected=("A", "B", "C"),
    total_rounds=2,
    min_clients=2,
    start_wait=10.0,
    deadline=60.0,
    heartbeat_interval=5.0,
    heartbeat_patience=3,
)


def joined(*names: str, now: float = 0.0, rules: RoundRules = RULES) -> RoundMachine:
    m = RoundMachine(rules, 0, now)
    for n in names:
        m.join(n, now)
    return m


def test_first_round_waits_for_min_clients_then_for_the_others_up_to_start_wait():
    m = joined("A")
    assert m.decide(1.0) is Action.NONE
    assert "1/3 joined" in m.message(1.0) and "missing B, C" in m.message(1.0)
    m.join("B", 2.0)
    assert m.decide(2.0) is Action.NONE  # min reached: start_wait starts now
    assert "starting without them in 10 s" in m.message(2.0)
    assert m.decide(11.9) is Action.NONE
    assert m.decide(12.0) is Action.OPEN


def test_first_round_opens_at_once_when_every_expected_scenario_joined():
    m = joined("A", "B", "C")
    assert m.decide(0.5) is Action.OPEN
    m.open_round(0.5)
    assert m.phase is Phase.OPEN and m.round == 1 and m.deadline_at == 60.5


def test_round_closes_when_every_live_client_submitted():
    m = joined("A", "B", "C")
    m.open_round(0.0)
    m.record_submission("A", "x", 1.0)
    m.record_submission("B", "y", 2.0)
    assert m.decide(3.0) is Action.NONE
    assert "waiting for C" in m.message(3.0) and "deadline in 57 s" in m.message(3.0)
    m.record_submission("C", "z", 4.0)
    assert m.decide(4.0) is Action.CLOSE and m.closing_reason == "all_submitted"


def test_lost_client_is_not_waited_for():
    m = joined("A", "B", "C")
    m.open_round(0.0)
    for t in (5.0, 10.0):  # A and B heartbeat; C went silent at 0
        m.touch("A", t)
        m.touch("B", t)
    m.record_submission("A", "x", 10.0)
    m.record_submission("B", "y", 10.0)
    assert m.decide(14.9) is Action.NONE  # C still inside 5 s × 3 patience
    assert m.decide(15.1) is Action.CLOSE
    assert "lost C" in m.message(15.1)


def test_deadline_closes_with_min_clients_and_extends_below_it():
    m = joined("A", "B", "C")
    m.open_round(0.0)
    m.record_submission("A", "x", 1.0)
    for t in range(5, 61, 5):
        for n in "ABC":
            m.touch(n, float(t))
    assert m.decide(60.0) is Action.EXTEND
    m.extend(60.0)
    assert m.deadline_at == 120.0
    assert "deadline extended 1x: 1 of min 2 submissions" in m.message(60.0)
    m.record_submission("B", "y", 70.0)
    m.touch("C", 115.0)
    assert m.decide(119.0) is Action.NONE
    assert m.decide(120.0) is Action.CLOSE and m.closing_reason == "deadline"


def test_close_opens_the_next_round_then_finishes():
    m = joined("A", "B", "C")
    m.open_round(0.0)
    for n in "AB":
        m.record_submission(n, n, 1.0)
    assert m.begin_close() == ["A", "B"]
    assert m.phase is Phase.AGGREGATING and m.decide(2.0) is Action.NONE
    m.finish_close(2.0)
    assert (m.phase, m.round, m.completed, m.submitted) == (Phase.OPEN, 2, 1, {})
    assert m.clients["A"].rounds == [1] and m.clients["C"].rounds == []
    for n in "ABC":
        m.record_submission(n, n, 3.0)
    m.begin_close()
    m.finish_close(4.0)
    assert m.phase is Phase.FINISHED and m.completed == 2
    assert "finished after 2 rounds" in m.message(4.0)


def test_restart_resumes_at_the_next_round_or_finished():
    m = RoundMachine(RULES, 1, 0.0)
    assert (m.phase, m.round, m.completed) == (Phase.WAITING, 2, 1)
    assert RoundMachine(RULES, 2, 0.0).phase is Phase.FINISHED


def test_rejoin_replaces_the_session_and_revives_the_client():
    m = joined("A", "B", "C")
    first = m.clients["A"].session_id
    m.join("A", 100.0)
    assert m.clients["A"].session_id != first and m.clients["A"].joins == 2
    assert m.is_live("A", 100.0) and not m.is_live("B", 100.0)
