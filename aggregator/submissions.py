"""The federation's submission calls: a submission's header checked before any byte is
accepted, the received bytes validated and recorded (idempotently, refusing a different
second one), and the evaluations clients report after a round. A part of
:class:`~aggregator.federation.Federation` (a mixin: it works on the federation's state under
the federation's lock); the checks themselves are :mod:`aggregator.intake`'s."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aggregator.answers import Status, SubmitResult
from aggregator.errors import Reason, Refusal
from aggregator.history import History
from aggregator.hooks import Hooks
from aggregator.intake import (
    Submission,
    UploadTicket,
    check_header,
    clean_evaluation,
    clean_note,
    decode_payload,
    finite_metrics,
)
from aggregator.records import RoundClient, fmt_auc
from aggregator.rounds import Phase, RoundMachine
from msmtrec.codec import TensorSpec
from msmtrec.faults import fault_point

log = logging.getLogger("aggregator")


class Submissions:
    """Submissions and reported evaluations (see :class:`~aggregator.federation.Federation`)."""

    # state of the Federation this part works on (set by Federation.__init__)
    _cond: threading.Condition
    machine: RoundMachine
    clock: Callable[[], float]
    hooks: Hooks
    expected: dict[str, TensorSpec]
    max_payload_bytes: int
    history: History
    _pending: dict[str, Submission]
    _require_joined: Callable[[str], None]
    _status: Callable[..., Status]

    def begin_submission(
        self,
        scenario: str,
        round_number: int,
        num_samples: int,
        metrics: Mapping[str, float],
        specs: Sequence[TensorSpec],
        declared_total: int,
    ) -> UploadTicket:
        """Check a submission's header before accepting any of its bytes."""
        check_header(self.expected, specs, declared_total, self.max_payload_bytes, num_samples)
        clean = finite_metrics(metrics, "metrics")
        with self._cond:
            self._check_round_open(scenario, round_number)
        return UploadTicket(
            scenario, round_number, num_samples, clean, tuple(specs), declared_total
        )

    def _check_round_open(self, scenario: str, round_number: int) -> None:
        m = self.machine
        self._require_joined(scenario)
        if m.phase is Phase.FINISHED:
            raise Refusal(
                Reason.FINISHED, f"the federation finished after round {m.completed}; "
                f"round {round_number} takes no more submissions",
            )  # fmt: skip
        if m.phase is not Phase.OPEN or round_number != m.round:
            state = "open" if m.phase is Phase.OPEN else m.phase.value
            raise Refusal(
                Reason.WRONG_ROUND,
                f"round {round_number} is not open for submissions; the current round is "
                f"{m.round} ({state})",
            )
        if not m.eligible(scenario):
            raise Refusal(
                Reason.NOT_SAMPLED,
                f"round {round_number} sampled {', '.join(m.sampled or ())}, not {scenario}; "
                "download and evaluate, then wait for the next round",
            )

    def complete_submission(self, ticket: UploadTicket, buffer: Any, nbytes: int) -> SubmitResult:
        """Validate the received bytes and record the submission (idempotently)."""
        params, digest = decode_payload(ticket, buffer)
        seconds = time.perf_counter() - ticket.started
        with self._cond:
            self._check_round_open(ticket.scenario, ticket.round)
            existing = self._pending.get(ticket.scenario)
            if existing is not None:
                if existing.digest == digest:
                    self.machine.touch(ticket.scenario, self.clock())
                    return SubmitResult(True, digest, self._status(ticket.scenario))
                raise Refusal(
                    Reason.CONFLICTING_RESUBMISSION,
                    f"{ticket.scenario} already submitted different parameters for round "
                    f"{ticket.round}; a submission cannot be replaced",
                )
            self._pending[ticket.scenario] = Submission(
                ticket.scenario, ticket.round, ticket.num_samples, ticket.metrics, params,
                digest, nbytes, seconds, self.clock(),
            )  # fmt: skip
            self.machine.record_submission(ticket.scenario, digest, self.clock())
            rec = self.machine.clients[ticket.scenario]
            rec.bytes_in += nbytes
            self.hooks.bytes_in(ticket.scenario, nbytes)
            log.info(
                "round %d: %s submitted %d samples, %.2f MB in %.2f s (%s)",
                ticket.round, ticket.scenario, ticket.num_samples, nbytes / 1e6, seconds,
                self.machine.message(self.clock()),
            )  # fmt: skip
            # (test-only; pausing here holds the lock: the round cannot close meanwhile)
            fault_point("aggregator.submission_recorded", ticket.round)
            self._cond.notify_all()
            return SubmitResult(False, digest, self._status(ticket.scenario))

    def report_metrics(
        self,
        scenario: str,
        round_number: int,
        splits: Mapping[str, Mapping[str, Mapping[str, Any]]],
        timings: Mapping[str, float],
        publish_error: str = "",
    ) -> None:
        clean_timings = finite_metrics(timings, "timings")
        clean = clean_evaluation(splits)
        problem = clean_note(publish_error)
        with self._cond:
            # No join needed: the token already proves the scenario, and a client whose
            # aggregator restarted should not lose the evaluation it just made.
            if not 1 <= round_number <= self.machine.completed:
                raise Refusal(
                    Reason.WRONG_ROUND,
                    f"round {round_number} has not completed (completed rounds: "
                    f"{self.machine.completed})",
                )
            record = self.history.find(round_number)
            if record is None:
                raise Refusal(Reason.UNKNOWN_ROUND, f"no record of round {round_number}")
            client = record.clients.setdefault(scenario, RoundClient(participated=False))
            client.eval = clean
            rec = self.machine.clients.get(scenario)
            finished = self.machine.phase is Phase.FINISHED
            if rec is not None and finished and round_number == self.machine.completed:
                rec.final_reported = True
            if clean_timings:
                client.client_timings = {**(client.client_timings or {}), **clean_timings}
            client.publish_error = problem
            self.history.write()
        self.hooks.evaluation_reported(round_number, scenario, clean)
        valid = clean.get("valid", {})
        log.info(
            "round %d: %s evaluated its personalized model: valid AUC %s",
            round_number, scenario,
            " ".join(f"{t} {fmt_auc(m.auc)}" for t, m in valid.items()) or "n/a",
        )  # fmt: skip
        if problem:
            log.warning("round %d: %s could not publish its model: %s", round_number,
                        scenario, problem)  # fmt: skip
