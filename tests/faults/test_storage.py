"""Full disks, a shared state directory and a stop while stuck (issue #16), with real
processes on 127.0.0.1 and, for the full disks, a real size-limited tmpfs filled to the last
byte (the tests skip where mounting is not allowed; see ``helpers/disk.py``).

* The aggregator's state directory full: the round's checkpoint is retried while
  ``/v1/status`` says why (``storage_problem``) and the previous checkpoint stays intact;
  space back within the retry window → the round completes with no restart; SIGTERM while
  retrying → exits within the grace period; retries used up → exit 3, and a restart after
  space returns resumes from the last durable round. No completed round is lost.
* The registry full: every client logs the failed publish, reports it in the round record
  (``publish_error``) and goes on training; a model store (what the gateway serves) keeps
  the last good version; the next publish after space returns succeeds.
* The aggregator's ``--spill-dir`` full: submissions are refused UNAVAILABLE (retryable)
  while no space is left, the clients retry, and once space returns the federation finishes
  with the numbers of an uninterrupted run.
* A second aggregator on the same ``--state-dir`` exits 2 naming the holder, touching
  nothing; SIGTERM while the federation's lock is held (a handler stuck) still ends the
  process within the grace period plus a few seconds.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from helpers.disk import fill, small_disk
from helpers.faults import START, FaultRun, assert_equals_uninterrupted
from helpers.processes import wait_until

from aggregator.checkpoint import CheckpointStore
from gateway.metrics import GatewayMetrics
from gateway.store import ModelStore
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.registry import ModelRegistry

GRACE = 5.0  # the aggregator's default shutdown_grace_seconds
STOP_BOUND = GRACE + 3.0 + 4.0  # grace + the hard bound's slack + interpreter teardown


def _status(run: FaultRun) -> dict:
    return httpx.get(run.fed.url("/v1/status"), timeout=3).json()


def _wait_status(run: FaultRun, what: str, predicate, timeout: float = START) -> dict:
    def check() -> dict | None:
        st = _status(run)
        return st if predicate(st) else None

    return wait_until(check, timeout, what, 0.05, run.processes.logs)


def _sigterm_within(proc, bound: float) -> tuple[int, float]:
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.wait(bound + 10)
    return code, time.monotonic() - start


def _stuck(st: dict) -> bool:
    """A round's checkpoint is being retried (phase aggregating, the status says why)."""
    return st["phase"] == "aggregating" and "could not be written" in (st["storage_problem"] or "")


def test_full_state_dir_retries_reports_stops_in_time_exits_3_and_resumes(make_run):
    # Rounds take well under a second here, so which round meets the full disk is read
    # from the status rather than assumed.
    run = make_run(rounds=6)
    with small_disk(run.fed.state_dir, 48):
        agg = run.aggregator(checkpoint_attempts=10_000, checkpoint_retry_seconds=0.3)
        clients = [run.client(s) for s in run.fed.scenarios]

        # 1. Full after round 1: the next round's checkpoint is retried, the status says why.
        _wait_status(run, "round 1 durable", lambda s: s["completed_rounds"] >= 1)
        filler = fill(run.fed.state_dir)
        st = _wait_status(run, "a checkpoint write to fail", _stuck)
        r1 = st["round"]
        assert f"round {r1}" in st["storage_problem"], st
        assert "No space left on device" in st["storage_problem"], st
        ready = httpx.get(run.fed.url("/readyz"), timeout=3).json()
        assert ready["storage_problem"], ready
        assert run.checkpoints.load_latest().round == r1 - 1  # the previous one, intact
        assert agg.alive() and all(c.alive() for c in clients)
        # space comes back within the retry window: no restart needed
        filler.unlink()
        _wait_status(run, f"round {r1} durable", lambda s: s["completed_rounds"] >= r1)
        assert _status(run)["storage_problem"] is None
        assert f"the checkpoint of round {r1} is written after all" in agg.log()

        # 2. Full again; SIGTERM while the next checkpoint is being retried.
        filler = fill(run.fed.state_dir)
        st = _wait_status(run, "a checkpoint write to fail again", _stuck)
        r2 = st["round"]
        before = run.durable()
        assert list(before) == list(range(1, r2)), (before, r2)
        code, seconds = _sigterm_within(agg, STOP_BOUND)
        assert seconds < STOP_BOUND, f"SIGTERM took {seconds:.1f} s"
        assert code == 0, agg.tail()
        assert "stopped before it was durable" in agg.log()

        # 3. A restart on the still-full disk: the re-run round fails its checkpoint twice
        #    and the process exits 3; the durable rounds are untouched.
        agg2 = run.aggregator("aggregator-2", checkpoint_attempts=2, checkpoint_retry_seconds=0.2)
        assert agg2.wait(START) == 3, agg2.tail()
        log2 = agg2.log()
        assert f"could not write the checkpoint of round {r2}" in log2, log2
        assert "previous checkpoint is intact" in log2
        assert run.durable() == before
        assert not list(run.checkpoints.dir.glob(".*tmp*")), "a temp file was left"

        # 4. Space back: a restart resumes after the last durable round and finishes.
        filler.unlink()
        agg3 = run.aggregator("aggregator-3")
        run.finish(clients, agg3)
        assert f"resumed after round {r2 - 1}" in agg3.log()
        run.assert_recovered(before)


def _served_round(run: FaultRun, scenario: str) -> int | None:
    """What a gateway serves for ``scenario`` now (a real ModelStore scan)."""
    store = ModelStore(ModelRegistry(run.registry), ALIEXPRESS, GatewayMetrics())
    store.refresh()
    model = store.get(scenario)
    return None if model is None else model.info.round


def _published_round(run: FaultRun, scenario: str) -> int | None:
    info = ModelRegistry(run.registry).latest(scenario)
    return None if info is None else info.round


@pytest.mark.faults_full  # the CI selection covers the same path without a mount (below)
def test_full_registry_is_reported_and_training_goes_on(make_run):
    run = make_run(rounds=4)
    scenarios = run.fed.scenarios
    with small_disk(run.registry, 24):
        agg = run.aggregator()
        clients = [run.client(s) for s in scenarios]
        wait_until(
            lambda: all(_published_round(run, s) == 1 for s in scenarios),
            START, "round 1's models to be published", 0.05, run.processes.logs,
        )  # fmt: skip
        filler = fill(run.registry)

        def failed_publishes() -> bool:
            rounds = httpx.get(run.fed.url("/v1/rounds"), timeout=3).json()
            r2 = next((r for r in rounds if r["round"] == 2), None)
            return r2 is not None and all(
                (r2["clients"].get(s) or {}).get("publish_error") for s in scenarios
            )

        wait_until(failed_publishes, START, "round 2's failed publishes", 0.1, run.processes.logs)
        assert all(c.alive() for c in clients), run.processes.logs()
        for s in scenarios:
            assert _served_round(run, s) == 1  # the last good version is still served
        assert _status(run)["completed_rounds"] >= 2  # training went on
        filler.unlink()
        run.finish(clients, agg)
        run.assert_recovered()  # every scenario serves round 4's model
        history = json.loads((run.fed.state_dir / "history.json").read_text())
        rounds = {r["round"]: r for r in history}
        for s in scenarios:
            assert "No space left on device" in rounds[2]["clients"][s]["publish_error"]
            assert rounds[4]["clients"][s].get("publish_error") is None
        for c in clients:
            assert "could not publish the model of round 2" in c.log()


def test_second_aggregator_refuses_and_sigterm_ends_a_stuck_aggregator(make_run):
    """The first aggregator pauses with the federation's lock held (a submission being
    recorded): its heartbeat handlers block on that lock. A second aggregator on the same
    state directory exits 2 naming the first; SIGTERM ends the stuck one within the bound."""
    run = make_run(rounds=2)
    point = "aggregator.submission_recorded:1"
    agg = run.aggregator(pause=point)
    clients = [run.client(s) for s in run.fed.scenarios]
    run.wait_paused(agg, point)
    files = sorted(p.name for p in run.fed.state_dir.rglob("*"))
    second = run.aggregator("aggregator-second")
    assert second.wait(START) == 2, second.tail()
    log = second.log()
    assert "in use by another aggregator" in log and f"pid {agg.pid}" in log, log
    assert "Traceback" not in log
    assert sorted(p.name for p in run.fed.state_dir.rglob("*")) == files  # untouched
    time.sleep(2)  # the clients' heartbeats are now queued behind the held lock
    code, seconds = _sigterm_within(agg, STOP_BOUND)
    assert seconds < STOP_BOUND, f"SIGTERM took {seconds:.1f} s:\n{agg.tail()}"
    assert code in (0, 3), agg.tail()
    for c in clients:
        c.kill()
    store = CheckpointStore(run.fed.state_dir / "checkpoints")
    assert store.rounds() == []


def test_unwritable_registry_without_a_mount(make_run):
    """The same guarantee where no tmpfs can be mounted: a registry path the client cannot
    write (a regular file where its directory should be) fails every publish with an
    OSError; the clients log it, report it in each round's record, and finish."""
    run = make_run(rounds=2)
    run.registry.write_text("not a directory\n")
    agg = run.aggregator()
    clients = [run.client(s) for s in run.fed.scenarios]
    run.finish(clients, agg)
    history = json.loads((run.fed.state_dir / "history.json").read_text())
    assert [r["round"] for r in history] == [1, 2]
    for r in history:
        for s in run.fed.scenarios:
            assert r["clients"][s]["publish_error"], r["clients"][s]
    for c in clients:
        assert "could not publish the model of round 2" in c.log()
        assert "Traceback" not in c.log()


def test_full_spill_dir_refuses_submissions_retryably_and_the_federation_recovers(make_run):
    run = make_run(rounds=2)
    spill = run.fed.root / "spill"
    with small_disk(spill, 4):
        filler = fill(spill)
        agg = run.aggregator(spill_dir=spill)
        clients = [run.client(s) for s in run.fed.scenarios]
        wait_until(
            lambda: "cannot store a submission" in agg.log(), START,
            "a submission refused for want of spill space", 0.1, run.processes.logs,
        )  # fmt: skip
        assert "No space left on device" in agg.log()
        assert agg.alive() and all(c.alive() for c in clients)
        assert run.status()["completed_rounds"] == 0
        filler.unlink()  # space back: the clients' retries get through
        run.finish(clients, agg)
    run.assert_recovered()
    assert_equals_uninterrupted(run)
