"""Many clients (issue 16, item 5): 64 real scenario-client processes against one real
aggregator over 127.0.0.1, for 2 rounds, small preset and a few hundred rows each.

Full run only (``faults_full``: ``MSMTREC_FULL_FAULTS=1``): 64 Python processes that each
import torch take minutes of CPU on a 2-core machine and ~10 GB of memory. Every round must
close with all 64 participants counted, each client must exit 0 (it trained, submitted,
received its personalized model and evaluated it), and every scenario's registry version
must load and predict. The aggregation above 8 clients takes the sketched conflict-averse
path (ca_scale=auto; msmtrec.federation.blocks), so this is also that path end to end.
"""

from __future__ import annotations

import time

import pytest
from helpers.faults import FaultRun

CLIENTS = 64
ROUNDS = 2
BUDGET = 1500.0  # seconds for the whole federation (start-up dominates: 64 torch imports)


@pytest.mark.faults_full
def test_sixty_four_client_processes_close_every_round_with_all_of_them(make_run):
    names = [f"M{i:02d}" for i in range(CLIENTS)]
    run: FaultRun = make_run(
        scenarios=names,
        rounds=ROUNDS,
        train_rows=300,
        test_rows=100,
        min_clients=CLIENTS,
        start_wait_seconds=BUDGET,
        round_deadline_seconds=BUDGET,
        heartbeat_interval_seconds=2,
        heartbeat_patience=120,
    )
    started = time.monotonic()
    agg = run.aggregator()
    clients = [run.client(s, poll_seconds=5, reconnect_timeout_seconds=BUDGET) for s in names]

    deadline = started + BUDGET
    while any(c.alive() for c in clients):  # fail fast if the aggregator dies
        if agg.poll() not in (None, 0):
            raise AssertionError(f"aggregator exited {agg.poll()}:\n{agg.tail()}")
        assert time.monotonic() < deadline, f"timed out:\n{run.processes.logs()}"
        time.sleep(2.0)
    assert agg.wait(120) == 0, agg.tail()
    elapsed = time.monotonic() - started
    history = run.assert_recovered()
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    for r in history:
        assert sorted(r["participants"]) == names, (r["round"], len(r["participants"]))
    print(f"\n{CLIENTS} client processes × {ROUNDS} rounds in {elapsed:.0f} s")
    # Last, so that a failure here says the federation itself was fine: both runs of
    # 2026-12-05 had one client of 64 abort after "federation finished" with "terminate
    # called without an active exception" (exit -6) — probably its daemon heartbeat thread
    # still in a gRPC call after ScenarioClient.close()'s 2 s join (not yet diagnosed).
    failed = {c.name: (c.wait(0), c.tail(3)) for c in clients if c.wait(0) != 0}
    assert not failed, f"clients exited non-zero after the federation finished: {failed}"
