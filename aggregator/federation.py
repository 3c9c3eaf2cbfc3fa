"""The aggregator's state and its operations, independent of gRPC and HTTP.

One :class:`Federation` owns the core :class:`~msmtrec.federation.strategy.Strategy`, the
round state machine, the round history and the checkpoint store, and does the round
accounting: joins, payloads, submissions, closing a round. The other jobs live next door:
checking what clients send (``intake``), the round record (``records``), the history file
(``history``) and the read-only views (``views``). The gRPC servicer and the status API are
thin adapters; tests drive it directly too.

Invariants:

* Nothing from the network touches the Strategy until a whole submission has been received
  and validated (manifest against the signature and the size limit before any byte, then
  the byte count, then finite values). Rejected calls leave :meth:`state_checksum` as it
  was.
* Only the controller (:meth:`tick`) mutates the Strategy, and only in the ``AGGREGATING``
  phase, during which no payload is read from it. A round's result is checkpointed before
  the next round opens, so a completed round is never lost.
* Updates are reduced in client-id order (the Strategy sorts them), never arrival order.
* Closing a round (``closing``) either completes (record, checkpoint, next phase) or,
  once the Strategy has changed, raises :class:`CloseFailure` (the process exits 3 and a
  restart resumes from the last checkpoint): the round machine is never left in
  ``AGGREGATING`` with nothing to move it on.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.checkpoint import Checkpoint, CheckpointStore
from aggregator.closing import CloseFailure, RoundCloser
from aggregator.errors import Reason, Refusal
from aggregator.history import DEFAULT_RETENTION, History
from aggregator.hooks import Hooks, NoHooks
from aggregator.intake import (
    Submission,
    UploadTicket,
    check_header,
    clean_evaluation,
    clean_note,
    decode_payload,
    finite_metrics,
)
from aggregator.records import (
    ClosingRound,
    RoundClient,
    RoundRecord,
    fmt_auc,
    round_line,
)
from aggregator.rounds import Action, Phase, RoundMachine, RoundRules
from msmtrec.codec import (
    Encoded,
    TensorSpec,
    canonical_json,
    compare_signatures,
    encode,
    signature_of,
)
from msmtrec.faults import fault_point
from msmtrec.federation.methods import check_networked
from msmtrec.federation.sampling import round_participants
from msmtrec.federation.strategy import Strategy
from msmtrec.spec import FederationSpec

log = logging.getLogger("aggregator")


@dataclass
class Status:
    phase: Phase
    round: int
    completed_rounds: int
    total_rounds: int
    deadline_unix: float | None
    joined: list[str]
    live: list[str]
    submitted: list[str]
    min_clients: int
    message: str
    you_are_joined: bool = False
    you_submitted: bool = False
    participants: list[str] | None = None  # the open round's sample (None: every client)


@dataclass
class SubmitResult:
    duplicate: bool
    digest: str
    status: Status


@dataclass
class Payload:
    round: int  # the round this payload starts
    completed_rounds: int
    final: bool
    encoded: Encoded


class Federation:
    """Strategy + round state machine + history + checkpoints, behind one lock (see the
    module docstring for the invariants)."""

    def __init__(
        self,
        spec: FederationSpec,
        scenarios: Sequence[str],
        store: CheckpointStore,
        *,
        min_clients: int = 2,
        start_wait: float = 30.0,
        deadline: float = 600.0,
        heartbeat_interval: float = 5.0,
        heartbeat_patience: int = 3,
        max_poll: float = 30.0,
        chunk_bytes: int = 1 << 20,
        max_payload_bytes: int = 512 << 20,
        history_path: Path | None = None,
        history_rounds: int = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
        hooks: Hooks | None = None,
    ) -> None:
        check_networked(spec.method)  # central references pool all data: refused, saying why
        if not scenarios:
            raise ValueError("a federation needs at least one scenario")
        if min_clients > len(scenarios):
            raise ValueError(f"min_clients {min_clients} > {len(scenarios)} scenarios")
        self.spec = spec
        self.spec_digest = spec.digest()
        self.scenarios = tuple(sorted(scenarios))
        self.store = store
        self.history_path = history_path
        self.clock = clock
        self.hooks: Hooks = hooks or NoHooks()
        self.chunk_bytes = chunk_bytes
        self.max_payload_bytes = max_payload_bytes
        self.max_poll = max_poll
        self.heartbeat_interval = heartbeat_interval
        self._cond = threading.Condition(threading.RLock())
        self.closer = RoundCloser(spec, store)
        self.signature = signature_of(self.strategy.initial, self.strategy.names)
        self.expected = {s.name: s for s in self.signature}
        self.history = History(history_path, history_rounds)
        self._stopping = False
        self.resumed_from: int | None = None
        checkpoint = store.load_latest()
        if checkpoint is not None:
            self._restore(checkpoint)
        self._strategy_digest = self._digest_strategy()
        rules = RoundRules(
            expected=self.scenarios,
            total_rounds=spec.rounds,
            min_clients=min_clients,
            start_wait=start_wait,
            deadline=deadline,
            heartbeat_interval=heartbeat_interval,
            heartbeat_patience=heartbeat_patience,
            participants=self._sampler(),
        )
        self.machine = RoundMachine(rules, self.strategy.round, clock())
        self._pending: dict[str, Submission] = {}
        self._downloads: dict[str, dict[str, float]] = {}
        self._payloads: dict[tuple[str, int], Encoded] = {}
        self._last_report = 0.0
        self._round_resumed = checkpoint is not None
        self.ready = True

    # ------------------------------------------------------------------------ restore
    def _restore(self, ckpt: Checkpoint) -> None:
        state = ckpt.state
        if state.get("spec_digest") != self.spec_digest:
            raise ValueError(
                f"the checkpoint in {self.store.dir} was written by a federation with other "
                "settings (method, preset, seed, training or model overrides); start with a "
                "fresh --state-dir or the original settings"
            )
        self.strategy.load_state_dict(ckpt.tensors, state["strategy"])
        self.history.restore(state.get("history", []))
        self.resumed_from = self.strategy.round
        log.info("resumed from %s: %d completed rounds", ckpt.path.name, self.strategy.round)

    def _sampler(self) -> Callable[[int], tuple[str, ...]] | None:
        """Partial participation: the clients of each round, exactly as the simulation
        samples them (same scenarios, seed and configuration); None samples nobody out."""
        cfg = self.spec.federation()
        if cfg.clients_per_round is None and cfg.client_fraction is None:
            return None
        scenarios, seed = self.scenarios, self.spec.seed
        return lambda r: round_participants(scenarios, r, seed, cfg)

    def _digest_strategy(self) -> str:
        return self.closer.state_digest()

    # ------------------------------------------------------------------------- status
    def _status(self, scenario: str | None = None) -> Status:
        now = self.clock()
        m = self.machine
        return Status(
            phase=m.phase,
            round=m.round if m.phase is not Phase.FINISHED else m.completed,
            completed_rounds=m.completed,
            total_rounds=m.rules.total_rounds,
            deadline_unix=m.deadline_at if m.phase is Phase.OPEN else None,
            joined=m.joined(),
            live=m.live(now),
            submitted=sorted(m.submitted),
            min_clients=m.rules.min_clients,
            message=m.message(now),
            you_are_joined=scenario in m.clients if scenario else False,
            you_submitted=scenario in m.submitted if scenario else False,
            participants=list(m.sampled) if m.sampled is not None else None,
        )

    def status(self, scenario: str | None = None) -> Status:
        with self._cond:
            return self._status(scenario)

    def storage_problem(self) -> str | None:
        """Why the state directory is refusing writes right now (a checkpoint being
        retried, history.json not written), or None. Read without the lock: the closer
        sets it while it retries outside the lock."""
        return self.closer.problem or self.history.write_error

    def shutdown(self) -> None:
        """The process is stopping: long polls return now and a checkpoint retry gives up,
        so that every handler thread ends within the shutdown grace period."""
        self.closer.cancelled.set()
        self._stopping = True  # read by waiting long polls when they wake
        if self._cond.acquire(timeout=1.0):  # never blocks a stop on a held lock
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()

    @property
    def lock(self) -> threading.RLock:
        """The federation's lock, for views that read several fields consistently."""
        return self._cond  # type: ignore[return-value]  (a Condition is a context manager)

    def state_checksum(self) -> str:
        """sha256 of everything a call could change: the Strategy's state, the round and
        phase, the joined scenarios and the open round's accepted submissions (liveness
        timestamps excluded). Rejected calls must leave it unchanged."""
        with self._cond:
            m = self.machine
            doc = {
                "strategy": self._strategy_digest,
                "phase": m.phase.value,
                "round": m.round,
                "completed": m.completed,
                "joined": m.joined(),
                "submitted": sorted(m.submitted.items()),
            }
        return hashlib.sha256(canonical_json(doc).encode()).hexdigest()

    @property
    def strategy_checksum(self) -> str:
        return self._strategy_digest

    def finished(self) -> bool:
        with self._cond:
            return self.machine.phase is Phase.FINISHED

    def done(self) -> bool:
        """Finished, and every live client has reported the metrics of its final model."""
        with self._cond:
            m = self.machine
            if m.phase is not Phase.FINISHED:
                return False
            now = self.clock()
            return all(m.clients[s].final_reported for s in m.live(now))

    # -------------------------------------------------------------------------- calls
    def check_scenario(self, scenario: str) -> None:
        if scenario not in self.scenarios:
            raise Refusal(
                Reason.UNKNOWN_SCENARIO,
                f"scenario {scenario!r} is not part of this federation "
                f"({', '.join(self.scenarios)})",
            )

    def config(self) -> dict[str, Any]:
        return {
            "spec_json": self.spec.to_json(),
            "spec_digest": self.spec_digest,
            "heartbeat_interval": self.heartbeat_interval,
            "chunk_bytes": self.chunk_bytes,
            "max_payload_bytes": self.max_payload_bytes,
        }

    def join(
        self,
        scenario: str,
        spec_digest: str,
        signature: Sequence[TensorSpec],
        num_train_samples: int = 0,
    ) -> tuple[str, Status]:
        self.check_scenario(scenario)
        if spec_digest != self.spec_digest:
            raise Refusal(
                Reason.SPEC_MISMATCH,
                "the client built its model from another federation spec; fetch GetConfig "
                "again (the aggregator may have been restarted with other settings)",
            )
        problem = compare_signatures(signature, self.expected)
        if problem is not None:
            raise Refusal(Reason.SIGNATURE_MISMATCH, f"model signature differs: {problem}")
        with self._cond:
            rec = self.machine.join(scenario, self.clock(), num_train_samples)
            rec.final_fetched = rec.final_reported = False
            log.info(
                "%s joined (session %s, join #%d): %s",
                scenario, rec.session_id[:8], rec.joins, self.machine.message(self.clock()),
            )  # fmt: skip
            self._cond.notify_all()
            return rec.session_id, self._status(scenario)

    def heartbeat(self, scenario: str, wait: float = 0.0, after_round: int = 0) -> Status:
        """Liveness; with ``wait`` > 0 a long poll, answered as soon as there is something
        for this scenario to do: an open round it has not submitted to (or one past
        ``after_round``), the end of the federation, or a lost registration."""
        with self._cond:
            self.machine.touch(scenario, self.clock())
            if wait > 0 and scenario in self.machine.clients:
                end = time.monotonic() + min(wait, self.max_poll)

                def moved() -> bool:
                    m = self.machine
                    if self._stopping:
                        return True
                    if m.phase is Phase.FINISHED or scenario not in m.clients:
                        return True
                    return m.phase is Phase.OPEN and (
                        (scenario not in m.submitted and m.eligible(scenario))
                        or m.round > after_round
                    )

                while not moved():
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 1.0))
                    self.machine.touch(scenario, self.clock())
            return self._status(scenario)

    def _require_joined(self, scenario: str) -> None:
        if scenario not in self.machine.clients:
            raise Refusal(
                Reason.NOT_JOINED,
                f"scenario {scenario} has not joined (or the aggregator restarted)",
            )

    def payload(self, scenario: str, requested_round: int = 0) -> Payload:
        """The encoded θ^start of ``scenario`` for the open round, or its final payload."""
        with self._cond:
            self._require_joined(scenario)
            m = self.machine
            m.touch(scenario, self.clock())
            if m.phase is Phase.FINISHED:
                final = True
            elif m.phase is Phase.OPEN:
                final = False
                if requested_round not in (0, m.round):
                    raise Refusal(
                        Reason.WRONG_ROUND,
                        f"round {requested_round} is not open; the current round is {m.round}",
                    )
            else:
                raise Refusal(Reason.NOT_OPEN, m.message(self.clock()))
            key = (scenario, self.strategy.round)
            encoded = self._payloads.get(key)
            if encoded is None:
                encoded = encode(self.strategy.payload(scenario), self.strategy.names)
                self._payloads[key] = encoded
            return Payload(m.round, self.strategy.round, final, encoded)

    def record_download(self, scenario: str, payload: Payload, nbytes: int, seconds: float) -> None:
        self.hooks.bytes_out(scenario, nbytes)
        with self._cond:
            rec = self.machine.clients.get(scenario)
            if rec is not None:
                rec.bytes_out += nbytes
                if payload.final:
                    rec.final_fetched = True
            if not payload.final and payload.round == self.machine.round:
                d = self._downloads.setdefault(scenario, {"bytes": 0, "seconds": 0.0, "count": 0})
                d["bytes"] += nbytes
                d["seconds"] += seconds
                d["count"] += 1
            self._cond.notify_all()

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

    # --------------------------------------------------------------------- controller
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

    @property
    def strategy(self) -> Strategy:
        """The core Strategy (owned by the closer: only closing a round changes it)."""
        return self.closer.strategy

    # -------------------------------------------------------------------------- views
    def rounds_list(self) -> list[RoundRecord]:
        with self._cond:
            return self.history.snapshot()

    def live_count(self) -> int:
        with self._cond:
            return len(self.machine.live(self.clock()))
