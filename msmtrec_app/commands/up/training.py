"""``up`` while the federation trains: the status API read for progress (never the
children's logs), bounded waits for each round, and the end of training (every round
done, every client exited 0). A part of :class:`~msmtrec_app.commands.up.session.Up`."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.records import RoundRecord
from aggregator.views import StatusView
from msmtrec_app.commands.up.common import UpError, say
from msmtrec_app.commands.up.ports import Endpoints
from msmtrec_app.commands.up.reporting import Progress
from msmtrec_app.supervisor import ServiceProcess

ROUNDS_POLL_SECONDS = 2.0  # how often evaluations are looked for between round closes


class Training:
    """Progress and the wait for the end of training."""

    # state of the Up run this part works on (see msmtrec_app.commands.up.session.Up)
    args: argparse.Namespace
    run_dir: Path
    children: list[ServiceProcess]
    endpoints: Endpoints | None
    scenarios: list[str]
    progress_lines: Progress | None
    _rounds_polled: float
    phase: str
    try_get: Callable[[str], Any]
    get: Callable[..., Any]
    tick: Callable[[], None]
    set_phase: Callable[..., None]
    wait_for: Callable[..., Any]

    def status(self) -> StatusView | None:
        """The aggregator's ``/v1/status``, or None while it does not answer."""
        body = self.try_get(f"{self.endpoints.status}/v1/status")  # type: ignore[union-attr]
        return StatusView.model_validate(body) if body is not None else None

    def rounds(self) -> list[RoundRecord] | None:
        body = self.try_get(f"{self.endpoints.status}/v1/rounds")  # type: ignore[union-attr]
        return [RoundRecord.model_validate(r) for r in body] if body is not None else None

    @property
    def seen_rounds(self) -> int:
        return self.progress_lines.seen_rounds if self.progress_lines else 0

    def progress(self) -> None:
        """Round and client lines from the status API (what an operator sees)."""
        assert self.progress_lines is not None
        status = self.status()
        if status is None:
            return
        records: list[RoundRecord] = []
        now = time.monotonic()
        new_round = status.completed_rounds > self.seen_rounds
        if new_round or now - self._rounds_polled >= ROUNDS_POLL_SECONDS:
            self._rounds_polled = now
            records = self.rounds() or []
        for line in self.progress_lines.lines(status, records):
            say(line)

    def train(self) -> StatusView:
        """Wait for the federation to finish: all rounds done, every client exited 0."""
        a, ep = self.args, self.endpoints
        assert ep is not None
        self.wait_for(
            f"the aggregator's status API at {ep.status}/readyz",
            lambda: self.get(f"{ep.status}/readyz"),
            a.startup_timeout,
            blame="aggregator",
        )
        say(f"[aggregator] ready: gRPC {ep.grpc}, status API {ep.status}")
        self.set_phase("training")
        deadline = time.monotonic() + a.startup_timeout
        last_progress = self.seen_rounds
        while True:
            self.tick()
            self.progress()
            if self.seen_rounds != last_progress:
                last_progress = self.seen_rounds
                deadline = time.monotonic() + a.round_timeout
            clients = [c for c in self.children if c.role == "client"]
            if all(c.poll() == 0 for c in clients):
                status = self.status()
                if status is not None and status.phase == "finished":
                    self._rounds_polled = 0.0  # the final evaluations: look once more
                    self.progress()
                    return status
            if time.monotonic() > deadline:
                status = self.status()
                waiting = status.waiting_for if status else "(status API unreachable)"
                stuck = [c for c in clients if c.alive()]
                tails = "\n".join(f"  {c.name}:\n{c.tail(8, indent='    ')}" for c in stuck)
                raise UpError(
                    f"no round completed for {a.round_timeout:.0f} s (after round "
                    f"{self.seen_rounds}); the aggregator says: {waiting}\n{tails}"
                )
            time.sleep(0.25)
