"""The aggregator's state and its operations, independent of gRPC and HTTP.

One :class:`Federation` owns the core :class:`~msmtrec.federation.strategy.Strategy`, the
round state machine, the round history and the checkpoint store, and does the round
accounting. It is assembled from parts, one job each: the state, status and restore (this
module), joins, heartbeats and downloads (``membership``), submissions and reported
evaluations (``submissions``), the controller's ticks and round closes (``controller``), and
what the calls answer (``answers``). Next door: checking what clients send (``intake``),
aggregation + checkpoint + rollback (``closing``), the round record (``records``), the
history file (``history``) and the read-only views (``views``). The gRPC servicer and the
status API are thin adapters; tests drive it directly too.

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

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aggregator.answers import Payload, Status, SubmitResult
from aggregator.checkpoint import Checkpoint, CheckpointStore
from aggregator.closing import RoundCloser
from aggregator.controller import Controller
from aggregator.history import DEFAULT_RETENTION, History
from aggregator.hooks import Hooks, NoHooks
from aggregator.intake import Submission
from aggregator.membership import Membership
from aggregator.records import RoundRecord
from aggregator.rounds import Phase, RoundMachine, RoundRules
from aggregator.submissions import Submissions
from msmtrec.codec import Encoded, canonical_json, signature_of
from msmtrec.federation.methods import check_networked
from msmtrec.federation.sampling import round_participants
from msmtrec.federation.strategy import Strategy
from msmtrec.spec import FederationSpec
from msmtrec.spill import SpillDir

__all__ = ["Federation", "Payload", "Status", "SubmitResult"]

log = logging.getLogger("aggregator")


class Federation(Membership, Submissions, Controller):
    """Strategy + round state machine + history + checkpoints, behind one lock (see the
    module docstring for the invariants and the parts)."""

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
        spill: SpillDir | None = None,
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
        # Received submissions and the per-client server state in memory-mapped scratch
        # files (--spill-dir) instead of RAM; None: RAM.
        self.spill = spill
        self.closer = RoundCloser(spec, store, spill)
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
