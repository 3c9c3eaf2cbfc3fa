"""Network faults without a process dying (issue #16): a TCP proxy (``helpers/netproxy.py``,
127.0.0.1 only) between one client and the aggregator blackholes the path, stalls it in the
middle of an upload and resets it, each for longer than the round deadline, then recovers.

Guaranteed: every round closes by its deadline (no extension: the cut-off client is lost
after ``heartbeat_interval × patience`` and not waited for, and ``min_clients`` is 1), the
client's calls end (deadlines, keepalive pings) and it rejoins once the path is back, no
completed round is lost or repeated, and the federation finishes with every client.
"""

from __future__ import annotations

import time

import httpx
from helpers.faults import START, FaultRun
from helpers.netproxy import FaultyProxy
from helpers.processes import wait_until

DEADLINE = 10.0  # generous: round 1 (warm-up) on a loaded 2-core machine took > 6 s once
LIVENESS = 3.0  # heartbeat_interval 1 s × patience 3
HOLD = DEADLINE + 4.0  # each fault lasts longer than a round deadline


def _rounds(run: FaultRun) -> list[dict]:
    return httpx.get(run.fed.url("/v1/rounds"), timeout=3).json()


def _wait_round(run: FaultRun, what: str, predicate, after: int) -> dict:
    """The first round after round ``after`` whose record satisfies ``predicate``."""

    def find() -> dict | None:
        return next((r for r in _rounds(run) if r["round"] > after and predicate(r)), None)

    return wait_until(find, START, what, 0.1, run.processes.logs)


def test_blackhole_stall_and_reset_between_a_client_and_the_aggregator(make_run):
    # S0 reaches the aggregator over a slow link (~1.3 MB a round at 600 KB/s: ~2 s), which
    # paces the rounds whatever the CPU does, so that the federation (S0 goes on alone
    # meanwhile) is still running when S1's path comes back.
    run = make_run(
        rounds=30, min_clients=1, round_deadline_seconds=DEADLINE,
        heartbeat_interval_seconds=1, heartbeat_patience=3, start_wait_seconds=60,
    )  # fmt: skip
    upstream = ("127.0.0.1", run.fed.port)
    with (
        FaultyProxy(upstream) as proxy,
        FaultyProxy(upstream, bytes_per_second=600_000) as slow_link,
    ):
        agg = run.aggregator()
        direct = run.client("S0", aggregator=slow_link.target)
        behind = run.client(
            "S1", aggregator=proxy.target, keepalive_seconds=2, rpc_timeout_seconds=5,
            transfer_timeout_seconds=30,
        )  # fmt: skip
        both = ["S0", "S1"]
        first = _wait_round(
            run, "a round with both clients", lambda r: r["participants"] == both, 0
        )

        # 1. Blackhole: S1's packets vanish. A round closes without it, by its deadline.
        proxy.set_mode("blackhole")
        start = time.monotonic()
        alone = _wait_round(run, "a round without S1", lambda r: "S1" not in r["participants"],
                            first["round"])  # fmt: skip
        time.sleep(max(0.0, start + HOLD - time.monotonic()))
        proxy.set_mode("pass")
        back = _wait_round(run, "S1 back after the blackhole",
                           lambda r: r["participants"] == both, alone["round"])  # fmt: skip

        # 2. Stall in the middle of S1's next upload (0.64 MB: after 200 KB of it), then
        #    reset every connection, then recover.
        proxy.stall_after(200_000)
        wait_until(lambda: proxy.mode == "stall", START, "the upload to stall", 0.05,
                   run.processes.logs)  # fmt: skip
        start = time.monotonic()
        stalled = _wait_round(run, "a round without the stalled S1",
                              lambda r: "S1" not in r["participants"], back["round"])  # fmt: skip
        time.sleep(max(0.0, start + HOLD - time.monotonic()))
        proxy.set_mode("reset")
        time.sleep(3.0)  # every connection attempt refused outright for a while
        proxy.set_mode("pass")
        _wait_round(run, "S1 back after the stall and reset",
                    lambda r: r["participants"] == both, stalled["round"])  # fmt: skip

        run.finish([direct, behind], agg)
    history = run.assert_recovered()
    assert history[-1]["participants"] == both
    for r in history:
        # closed by all_submitted (S1 lost, or back) or at its deadline; never extended
        assert r["deadline_extensions"] == 0, r
        assert r["duration_seconds"] <= DEADLINE + 2.0, (r["round"], r["duration_seconds"])
    log = behind.log()
    assert "UNAVAILABLE" in log or "DEADLINE_EXCEEDED" in log, log[-3000:]
