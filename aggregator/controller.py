"""The federation's controller steps: one :meth:`Controller.tick` of the round state machine
(open a round, extend a deadline, close a round) and closing a round through
:class:`~aggregator.closing.RoundCloser` (aggregate, checkpoint, record, open the next).
A part of :class:`~aggregator.federation.Federation` (a mixin: it works on the federation's
state under the federation's lock); only the controller thread calls it."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable

from aggregator.closing import CloseFailure, RoundCloser
from aggregator.history import History
from aggregator.hooks import Hooks
from aggregator.intake import Submission
from aggregator.records import ClosingRound, round_line
from aggregator.rounds import Action, Phase, RoundMachine
from msmtrec.codec import Encoded
from msmtrec.spec import FederationSpec

log = logging.getLogger("aggregator")


class Controller:
    """Ticks and round closes (see :class:`~aggregator.federation.Federation`)."""

    # state of the Federation this part works on (set by Federation.__init__)
    _cond: threading.Condition
    machine: RoundMachine
    clock: Callable[[], float]
    hooks: Hooks
    spec: FederationSpec
    closer: RoundCloser
    history: History
    _pending: dict[str, Submission]
    _downloads: dict[str, dict[str, float]]
    _payloads: dict[tuple[str, int], Encoded]
    _last_report: float
    _round_resumed: bool
    _strategy_digest: str

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until a call changed something (a submission, a join) or ``timeout``:
        the controller closes a round as soon as its last submission arrived."""
        with self._cond:
            self._cond.wait(timeout)

    def tick(self) -> Action:
        """Advance the state machine once (called by the controller thread). Raises
        :class:`CloseFailure` when a round could not be closed consistently."""
        closing: ClosingRound | None = None
        with self._cond:
            now = self.clock()
            action = self.machine.decide(now)
            if action is Action.OPEN:
                self._open_round(now)
            elif action is Action.EXTEND:
                self.machine.extend(now)
                log.warning("deadline passed: %s", self.machine.message(now))
            elif action is Action.CLOSE:
                closing = self._begin_close(now)
            elif now - self._last_report >= 15.0 and self.machine.phase is not Phase.FINISHED:
                self._last_report = now
                log.info("%s", self.machine.message(now))
            if action is not Action.NONE:
                self._cond.notify_all()
        if closing is not None:
            try:
                self._close(closing)
            except CloseFailure:
                raise
            except Exception as exc:
                raise CloseFailure(
                    f"closing round {closing.round} failed ({type(exc).__name__}: {exc})"
                ) from exc
        return action

    def _open_round(self, now: float) -> None:
        r = self.machine.open_round(now)
        self._pending = {}
        self._downloads = {}
        self._last_report = now
        log.info(
            "round %d/%d open: clients %s, deadline %.0f s",
            r, self.machine.rules.total_rounds, ", ".join(self.machine.live(now)),
            self.machine.rules.deadline,
        )  # fmt: skip

    def _begin_close(self, now: float) -> ClosingRound:
        m = self.machine
        participants = m.begin_close()
        return ClosingRound(
            round=m.round,
            submissions=[self._pending[s] for s in participants],
            opened_at=m.opened_at or now,
            closed_at=now,
            closed_by=m.closing_reason,
            extensions=m.extensions,
            not_submitted=[s for s in m.joined() if s not in participants and m.eligible(s)],
            downloads=copy.deepcopy(self._downloads),
            resumed_after_restart=self._round_resumed,
            sampled=m.sampled,
        )

    def _close(self, closing: ClosingRound) -> None:
        record = self.closer.close(closing, self.history)
        if record is None:  # aggregation failed; the Strategy is as before: reopen the round
            with self._cond:
                self.machine.abort_close(self.clock())
                self._pending = {}
                self._downloads = {}
                self._cond.notify_all()
            return
        # open → next open: what one round costs end to end
        record.timing.wall_seconds = round(self.clock() - closing.opened_at, 6)
        with self._cond:
            self._strategy_digest = record.state_checksum
            self._payloads.clear()
            self.machine.finish_close(self.clock())
            self._pending = {}
            self._downloads = {}
            self._round_resumed = False
            self.history.append(record)
            if self.machine.phase is Phase.OPEN:
                self._open_round(self.clock())
            else:
                log.info("federation finished after %d rounds", self.machine.completed)
            self._cond.notify_all()
        self.hooks.round_closed(record)
        log.info("%s", round_line(record, self.spec.rounds))
