"""SIGKILL of the aggregator at every stage of a round, clients started before it, and damaged
checkpoints on disk. Real processes on 127.0.0.1 (see docs/RELIABILITY.md for the table).

The CI test runs every fault in sequence against one federation (one set of client processes
survives six aggregator processes), which costs a fraction of one federation per fault; the
``faults_full`` tests run each fault alone, and where the fault loses no work they also
check that the result equals an uninterrupted run bit for bit.
"""

from __future__ import annotations

import time

import pytest
from helpers.faults import START, FaultRun, assert_equals_uninterrupted


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped byte inside the tensor data: only the checksum can tell
        data[-7] ^= 0xFF
        path.write_bytes(bytes(data))


def _assert_refuses_to_start(run: FaultRun, name: str) -> None:
    """Every checkpoint is damaged: the aggregator must not start a fresh federation over
    the old one; it exits 2 with a line that says why and what to do."""
    files = {p: p.read_bytes() for p in run.checkpoints.dir.iterdir()}
    agg = run.aggregator(name)
    assert agg.wait(START) == 2, agg.tail()
    log = agg.log()
    assert "cannot start the aggregator" in log and "none of the" in log, log
    assert "Traceback" not in log
    assert {p: p.read_bytes() for p in run.checkpoints.dir.iterdir()} == files  # untouched


def test_aggregator_killed_at_every_stage_of_a_round(make_run):
    """One federation, six aggregator processes: clients start first; the aggregator is
    SIGKILLed after accepting a submission, while writing a checkpoint, between rounds, while
    aggregating, and once more between rounds after which its newest checkpoint is
    truncated on disk. The federation completes every round exactly once, nothing durable
    is lost except the damaged round (re-run from the previous good checkpoint), every
    scenario serves its final model, and with every checkpoint damaged it refuses to start."""
    run = make_run(rounds=3)
    clients = [run.client(s) for s in run.fed.scenarios]
    time.sleep(2)  # the clients are retrying: there is no aggregator yet
    assert all(c.alive() for c in clients)

    def kill_at(point: str, n: int):
        agg = run.aggregator(f"aggregator-{n}", pause=point)
        run.wait_paused(agg, point)
        agg.kill()
        return agg

    kill_at("aggregator.submission_recorded:1", 1)  # round 1 open, a submission accepted
    assert not run.durable()
    kill_at("aggregator.checkpoint_write:1", 2)  # temp file written, not renamed
    assert not run.checkpoints.rounds()
    assert list(run.checkpoints.dir.glob(".checkpoint-000001.safetensors.tmp-*"))
    kill_at("aggregator.between_rounds:1", 3)  # round 1 durable, round 2 not open
    before = run.durable()
    assert list(before) == [1]
    assert not list(run.checkpoints.dir.glob(".*tmp*")), "stale temp file not removed"
    kill_at("aggregator.aggregate:2", 4)
    assert run.durable() == before
    kill_at("aggregator.between_rounds:2", 5)
    assert list(run.durable()) == [1, 2]
    _damage(run.checkpoints.path_for(2), "truncate")

    agg = run.aggregator("aggregator-6")
    run.finish(clients, agg)
    log = agg.log()
    assert "skipping checkpoint" in log and "checkpoint-000002" in log
    assert "resumed after round 1" in log
    run.assert_recovered(before)  # round 1 as it was; round 2 re-run once; round 3
    for c in clients:
        assert "UNAVAILABLE" in c.log()  # they did start before the aggregator

    for path in run.checkpoints.dir.iterdir():
        _damage(path, "flip")
    _assert_refuses_to_start(run, "aggregator-7")


# ------------------------------------------------------------------- one fault at a time
EXACT = {"aggregator.submission_recorded:1", "aggregator.between_rounds:1"}


@pytest.mark.faults_full
@pytest.mark.parametrize(
    "point",
    [
        "aggregator.submission_recorded:1",
        "aggregator.aggregate:1",
        "aggregator.checkpoint_write:1",
        "aggregator.between_rounds:1",
        "aggregator.submission_recorded:2",
    ],
)
def test_aggregator_killed_at(make_run, point):
    """One SIGKILL at ``point``, restart, finish. Killing before a round's checkpoint is
    durable but after the clients' submissions were acknowledged (aggregate,
    checkpoint_write) makes them train that round again from their local state: the round
    counts once, but the result differs from an uninterrupted run. Everywhere else the
    result is identical to one."""
    run = make_run(rounds=2)
    agg = run.aggregator(pause=point)
    clients = [run.client(s) for s in run.fed.scenarios]
    run.wait_paused(agg, point)
    agg.kill()
    before = run.durable()
    agg2 = run.aggregator("aggregator-restarted")
    run.finish(clients, agg2)
    run.assert_recovered(before)
    if point in EXACT:
        assert_equals_uninterrupted(run)


@pytest.mark.faults_full
def test_clients_started_before_the_aggregator(make_run):
    run = make_run(rounds=2)
    clients = [run.client(s) for s in run.fed.scenarios]
    time.sleep(8)
    assert all(c.alive() for c in clients)
    agg = run.aggregator()
    run.finish(clients, agg)
    run.assert_recovered()
    assert_equals_uninterrupted(run)


@pytest.mark.faults_full
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_and_all_damaged_refuses(make_run, how):
    run = make_run(rounds=3)
    agg = run.aggregator(pause="aggregator.between_rounds:2")
    clients = [run.client(s) for s in run.fed.scenarios]
    run.wait_paused(agg, "aggregator.between_rounds:2")
    agg.kill()
    before = run.durable()
    _damage(run.checkpoints.path_for(2), how)
    agg2 = run.aggregator("aggregator-restarted")
    run.finish(clients, agg2)
    assert "resumed after round 1" in agg2.log()
    run.assert_recovered({1: before[1]})
    for path in run.checkpoints.dir.iterdir():
        _damage(path, how)
    _assert_refuses_to_start(run, "aggregator-damaged")
