"""The aggregator's state and its operations, independent of gRPC and HTTP.

One :class:`Federation` owns the core :class:`~msmtrec.federation.strategy.Strategy`, the
round state machine, the round history and the checkpoint store. The gRPC servicer and the
status API are thin adapters over its methods; tests drive it directly too.

Invariants:

* Nothing from the network touches the Strategy until a whole submission has been received
  and validated (manifest against the signature and the size limit before any byte, then
  the byte count, then finite values). Rejected calls leave :meth:`state_checksum` as it
  was.
* Only the controller (:meth:`tick`) mutates the Strategy, and only in the ``AGGREGATING``
  phase, during which no payload is read from it. A round's result is checkpointed before
  the next round opens, so a completed round is never lost.
* Updates are reduced in client-id order (the Strategy sorts them), never arrival order.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from aggregator.checkpoint import Checkpoint, CheckpointStore, atomic_write_bytes
from aggregator.errors import Refusal, invalid, precondition
from aggregator.rounds import Action, Phase, RoundMachine, RoundRules
from msmtrec.codec import (
    CodecError,
    Encoded,
    SizeLimitError,
    TensorSpec,
    canonical_json,
    check_manifest,
    compare_signatures,
    decode,
    encode,
    signature_of,
    tensors_digest,
    with_meta,
)
from msmtrec.faults import fault_point
from msmtrec.federation.methods import check_networked
from msmtrec.federation.spec import FederationSpec
from msmtrec.federation.strategy import ClientUpdate, Strategy

log = logging.getLogger("aggregator")

MAX_METRICS = 32
MAX_KEY_CHARS = 64
SPLITS = ("valid", "test", "train")


class Hooks(Protocol):
    """What the metrics exporter wants to hear about (see aggregator.metrics)."""

    def rejected(self, rpc: str, reason: str) -> None: ...
    def bytes_in(self, scenario: str, n: int) -> None: ...
    def bytes_out(self, scenario: str, n: int) -> None: ...
    def round_closed(self, record: Mapping[str, Any]) -> None: ...


class NoHooks:
    def rejected(self, rpc: str, reason: str) -> None:
        pass

    def bytes_in(self, scenario: str, n: int) -> None:
        pass

    def bytes_out(self, scenario: str, n: int) -> None:
        pass

    def round_closed(self, record: Mapping[str, Any]) -> None:
        pass


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


@dataclass
class UploadTicket:
    """A submission whose header was accepted; its bytes are still to come."""

    scenario: str
    round: int
    num_samples: int
    metrics: dict[str, float]
    specs: tuple[TensorSpec, ...]
    total_bytes: int
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Submission:
    scenario: str
    round: int
    num_samples: int
    metrics: dict[str, float]
    params: dict[str, torch.Tensor]
    digest: str
    bytes_in: int
    upload_seconds: float
    received_at: float = 0.0


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


def _finite_metrics(metrics: Mapping[str, float], what: str) -> dict[str, float]:
    if len(metrics) > MAX_METRICS:
        raise invalid("bad-metrics", f"{what}: at most {MAX_METRICS} entries")
    out = {}
    for k, v in metrics.items():
        if not k or len(k) > MAX_KEY_CHARS:
            raise invalid("bad-metrics", f"{what}: key {k[:80]!r} must be 1-{MAX_KEY_CHARS} chars")
        if not math.isfinite(v):
            raise invalid("bad-metrics", f"{what}: {k} is not finite")
        out[str(k)] = float(v)
    return out


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
        self.strategy = Strategy(spec.federation(), spec.initial_state())
        self.signature = signature_of(self.strategy.initial, self.strategy.names)
        self.expected = {s.name: s for s in self.signature}
        self.history: list[dict[str, Any]] = []
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
        self.history = list(state.get("history", []))
        self._merge_history_sidecar()
        self.resumed_from = self.strategy.round
        log.info("resumed from %s: %d completed rounds", ckpt.path.name, self.strategy.round)

    def _merge_history_sidecar(self) -> None:
        """Client evaluations arrive after their round's checkpoint; they are kept in
        history.json and merged back where the round's state checksum matches."""
        if self.history_path is None or not self.history_path.is_file():
            return
        try:
            side = json.loads(self.history_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s", self.history_path)
            return
        by_round = {r.get("round"): r for r in side if isinstance(r, dict)}
        for i, rec in enumerate(self.history):
            other = by_round.get(rec["round"])
            if other and other.get("state_checksum") == rec.get("state_checksum"):
                self.history[i] = other

    def _digest_strategy(self) -> str:
        tensors, meta = self.strategy.state_dict()
        return tensors_digest(tensors, meta)

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
        )

    def status(self, scenario: str | None = None) -> Status:
        with self._cond:
            return self._status(scenario)

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
                "PERMISSION_DENIED",
                "unknown-scenario",
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
            raise precondition(
                "spec-mismatch",
                "the client built its model from another federation spec; fetch GetConfig "
                "again (the aggregator may have been restarted with other settings)",
            )
        problem = compare_signatures(signature, self.expected)
        if problem is not None:
            raise precondition("signature-mismatch", f"model signature differs: {problem}")
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
                    if m.phase is Phase.FINISHED or scenario not in m.clients:
                        return True
                    return m.phase is Phase.OPEN and (
                        scenario not in m.submitted or m.round > after_round
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
            raise precondition(
                "not-joined", f"scenario {scenario} has not joined (or the aggregator restarted)"
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
                    raise precondition(
                        "wrong-round",
                        f"round {requested_round} is not open; the current round is {m.round}",
                    )
            else:
                raise precondition("not-open", m.message(self.clock()))
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
        try:
            check_manifest(
                specs, self.expected, declared_total=declared_total,
                max_bytes=self.max_payload_bytes,
            )  # fmt: skip
        except SizeLimitError as exc:
            raise Refusal("RESOURCE_EXHAUSTED", "too-large", str(exc)) from exc
        except CodecError as exc:
            raise invalid("bad-manifest", str(exc)) from exc
        if num_samples <= 0:
            raise invalid("bad-num-samples", "num_samples must be positive")
        clean = _finite_metrics(metrics, "metrics")
        with self._cond:
            self._check_round_open(scenario, round_number)
        return UploadTicket(
            scenario, round_number, num_samples, clean, tuple(specs), declared_total
        )

    def _check_round_open(self, scenario: str, round_number: int) -> None:
        m = self.machine
        self._require_joined(scenario)
        if m.phase is Phase.FINISHED:
            raise precondition(
                "finished", f"the federation finished after round {m.completed}; "
                f"round {round_number} takes no more submissions",
            )  # fmt: skip
        if m.phase is not Phase.OPEN or round_number != m.round:
            state = "open" if m.phase is Phase.OPEN else m.phase.value
            raise precondition(
                "wrong-round",
                f"round {round_number} is not open for submissions; the current round is "
                f"{m.round} ({state})",
            )

    def complete_submission(self, ticket: UploadTicket, buffer: Any, nbytes: int) -> SubmitResult:
        """Validate the received bytes and record the submission (idempotently)."""
        try:
            params = decode(ticket.specs, buffer, check_finite=True)
        except CodecError as exc:
            raise invalid("bad-values", str(exc)) from exc
        h = hashlib.sha256()
        h.update(canonical_json([[s.name, list(s.shape), s.dtype] for s in ticket.specs]).encode())
        h.update(canonical_json({"n": ticket.num_samples, "m": ticket.metrics}).encode())
        h.update(memoryview(buffer).cast("B"))
        digest = h.hexdigest()
        seconds = time.perf_counter() - ticket.started
        with self._cond:
            self._check_round_open(ticket.scenario, ticket.round)
            existing = self._pending.get(ticket.scenario)
            if existing is not None:
                if existing.digest == digest:
                    self.machine.touch(ticket.scenario, self.clock())
                    return SubmitResult(True, digest, self._status(ticket.scenario))
                raise Refusal(
                    "ALREADY_EXISTS",
                    "conflicting-resubmission",
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
    ) -> None:
        clean_timings = _finite_metrics(timings, "timings")
        clean: dict[str, dict[str, dict[str, Any]]] = {}
        for split, tasks in splits.items():
            if split not in SPLITS:
                raise invalid("bad-metrics", f"unknown split {split!r}")
            if len(tasks) > 16:
                raise invalid("bad-metrics", "at most 16 tasks per split")
            clean[split] = {}
            for task, m in tasks.items():
                if not task or len(task) > MAX_KEY_CHARS:
                    raise invalid("bad-metrics", "task names must be 1-64 characters")
                entry = {}
                for key in ("auc", "logloss"):
                    v = m.get(key)
                    if v is not None and not math.isfinite(v):
                        raise invalid("bad-metrics", f"{split}/{task}/{key} is not finite")
                    entry[key] = v
                entry["n"] = int(m.get("n", 0))
                entry["positives"] = int(m.get("positives", 0))
                clean[split][task] = entry
        with self._cond:
            # No join needed: the token already proves the scenario, and a client whose
            # aggregator restarted should not lose the evaluation it just made.
            if not 1 <= round_number <= self.machine.completed:
                raise precondition(
                    "wrong-round",
                    f"round {round_number} has not completed (completed rounds: "
                    f"{self.machine.completed})",
                )
            record = next((r for r in self.history if r["round"] == round_number), None)
            if record is None:
                raise precondition("unknown-round", f"no record of round {round_number}")
            client = record["clients"].setdefault(scenario, {"participated": False})
            client["eval"] = clean
            rec = self.machine.clients.get(scenario)
            finished = self.machine.phase is Phase.FINISHED
            if rec is not None and finished and round_number == self.machine.completed:
                rec.final_reported = True
            if clean_timings:
                client["client_timings"] = {**client.get("client_timings", {}), **clean_timings}
            self._write_history()
        valid = clean.get("valid", {})
        log.info(
            "round %d: %s evaluated its personalized model: valid AUC %s",
            round_number, scenario,
            " ".join(f"{t} {_fmt(m.get('auc'))}" for t, m in valid.items()) or "n/a",
        )  # fmt: skip

    # --------------------------------------------------------------------- controller
    def wait_for_change(self, timeout: float) -> None:
        """Sleep until a call changed something (a submission, a join) or ``timeout``:
        the controller closes a round as soon as its last submission arrived."""
        with self._cond:
            self._cond.wait(timeout)

    def tick(self) -> Action:
        """Advance the state machine once (called by the controller thread)."""
        with self._cond:
            now = self.clock()
            action = self.machine.decide(now)
            if action is Action.OPEN:
                self._open_round(now)
            elif action is Action.EXTEND:
                self.machine.extend(now)
                log.warning("deadline passed: %s", self.machine.message(now))
            elif action is Action.CLOSE:
                participants = self.machine.begin_close()
                submissions = [self._pending[s] for s in participants]
                opened_at = self.machine.opened_at or now
                closed_by = self.machine.closing_reason
                extensions = self.machine.extensions
                lost = [s for s in self.machine.joined() if s not in participants]
                downloads = copy.deepcopy(self._downloads)
                closed_at = now
            elif now - self._last_report >= 15.0 and self.machine.phase is not Phase.FINISHED:
                self._last_report = now
                log.info("%s", self.machine.message(now))
            if action is not Action.NONE:
                self._cond.notify_all()
        if action is Action.CLOSE:
            self._close(submissions, opened_at, closed_at, closed_by, extensions, lost, downloads)
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

    def _close(
        self,
        submissions: list[Submission],
        opened_at: float,
        closed_at: float,
        closed_by: str,
        extensions: int,
        not_submitted: list[str],
        downloads: dict[str, dict[str, float]],
    ) -> None:
        round_number = self.machine.round
        start = time.perf_counter()
        updates = [
            ClientUpdate(s.scenario, s.num_samples, s.params, dict(s.metrics)) for s in submissions
        ]
        fault_point("aggregator.aggregate", round_number)
        try:
            self.strategy.aggregate(updates)
        except Exception:
            log.exception("aggregation of round %d failed; reopening the round", round_number)
            self._reload_strategy()
            with self._cond:
                self.machine.abort_close(self.clock())
                self._pending = {}
                self._downloads = {}
                self._cond.notify_all()
            return
        aggregation_seconds = time.perf_counter() - start
        ckpt_start = time.perf_counter()
        tensors, meta = self.strategy.state_dict()
        digest_of_tensors = tensors_digest(tensors)
        strategy_digest = with_meta(digest_of_tensors, meta)
        record = self._record(
            round_number, submissions, opened_at, closed_at, closed_by, extensions,
            not_submitted, downloads, aggregation_seconds, strategy_digest,
        )  # fmt: skip
        state = {
            "strategy": meta,
            "completed_rounds": self.strategy.round,
            "history": [*self.history, record],
            "spec": self.spec.to_dict(),
            "spec_digest": self.spec_digest,
        }
        self._save_checkpoint(tensors, state, digest_of_tensors)
        fault_point("aggregator.between_rounds", round_number)
        record["checkpoint_seconds"] = round(time.perf_counter() - ckpt_start, 6)
        record["timing"]["checkpoint_seconds"] = record["checkpoint_seconds"]
        # open → next open: what one round costs end to end
        record["timing"]["wall_seconds"] = round(self.clock() - opened_at, 6)
        with self._cond:
            self.history.append(record)
            self._strategy_digest = strategy_digest
            self._payloads.clear()
            self.machine.finish_close(self.clock())
            self._pending = {}
            self._downloads = {}
            self._round_resumed = False
            self._write_history()
            if self.machine.phase is Phase.OPEN:
                self._open_round(self.clock())
            else:
                log.info("federation finished after %d rounds", self.machine.completed)
            self._cond.notify_all()
        self.hooks.round_closed(record)
        log.info("%s", round_line(record, self.spec.rounds))

    def _save_checkpoint(
        self, tensors: Mapping[str, torch.Tensor], state: dict, digest_of_tensors: str
    ) -> None:
        for attempt in range(3):
            try:
                self.store.save(self.strategy.round, tensors, state, digest_of_tensors)
                return
            except OSError:
                log.exception("writing the checkpoint failed (attempt %d of 3)", attempt + 1)
                time.sleep(1.0)
        raise CheckpointFailure(
            f"could not write the checkpoint of round {self.strategy.round} to {self.store.dir}"
        )

    def _reload_strategy(self) -> None:
        fresh = Strategy(self.spec.federation(), self.spec.initial_state())
        ckpt = self.store.load_latest()
        if ckpt is not None:
            fresh.load_state_dict(ckpt.tensors, ckpt.state["strategy"])
        self.strategy = fresh

    def _record(
        self,
        round_number: int,
        submissions: list[Submission],
        opened_at: float,
        closed_at: float,
        closed_by: str,
        extensions: int,
        not_submitted: list[str],
        downloads: dict[str, dict[str, float]],
        aggregation_seconds: float,
        strategy_digest: str,
    ) -> dict[str, Any]:
        clients: dict[str, Any] = {}
        for s in submissions:
            d = downloads.get(s.scenario, {})
            clients[s.scenario] = {
                "participated": True,
                "num_samples": s.num_samples,
                "bytes_in": s.bytes_in,
                "bytes_out": int(d.get("bytes", 0)),
                "upload_seconds": round(s.upload_seconds, 6),
                "download_seconds": round(float(d.get("seconds", 0.0)), 6),
                "metrics": s.metrics,
                "submission_sha256": s.digest,
            }
        for name in not_submitted:
            d = downloads.get(name, {})
            clients[name] = {"participated": False, "bytes_out": int(d.get("bytes", 0))}
        train = [s.metrics.get("train_seconds", 0.0) for s in submissions]
        transfer = [
            clients[s.scenario]["upload_seconds"] + clients[s.scenario]["download_seconds"]
            for s in submissions
        ]
        # The round's critical path is its last submitter: split its time since the round
        # opened into download, evaluation of the previous round's model, local training,
        # upload, and the rest (polling, waiting for the round to open for it, start-up).
        last = max(submissions, key=lambda s: s.received_at)
        c = clients[last.scenario]
        on_path = max(0.0, last.received_at - opened_at)
        parts = {
            "download_seconds": c["download_seconds"],
            "evaluation_seconds": float(last.metrics.get("eval_seconds", 0.0)),
            "local_training_seconds": float(last.metrics.get("train_seconds", 0.0)),
            "upload_seconds": c["upload_seconds"],
        }
        parts["client_other_seconds"] = max(0.0, on_path - sum(parts.values()))
        return {
            "round": round_number,
            "opened_at": opened_at,
            "closed_at": closed_at,
            "duration_seconds": round(closed_at - opened_at, 6),
            "closed_by": closed_by,
            "deadline_extensions": extensions,
            "resumed_after_restart": self._round_resumed,
            "participants": [s.scenario for s in submissions],
            "not_submitted": not_submitted,
            "num_samples": sum(s.num_samples for s in submissions),
            "bytes_in": sum(c.get("bytes_in", 0) for c in clients.values()),
            "bytes_out": sum(c.get("bytes_out", 0) for c in clients.values()),
            "aggregation_seconds": round(aggregation_seconds, 6),
            "timing": {
                "critical_client": last.scenario,
                **{k: round(v, 6) for k, v in parts.items()},
                "close_latency_seconds": round(max(0.0, closed_at - last.received_at), 6),
                "aggregation_seconds": round(aggregation_seconds, 6),
                "local_training_seconds_max": round(max(train, default=0.0), 6),
                "transfer_seconds_max": round(max(transfer, default=0.0), 6),
            },
            "state_checksum": strategy_digest,
            "clients": clients,
            # ε each private client has spent so far (its own report; docs/PRIVACY.md)
            "dp_epsilon": {
                s.scenario: s.metrics["dp_epsilon"]
                for s in submissions
                if "dp_epsilon" in s.metrics
            },
        }

    def _write_history(self) -> None:
        if self.history_path is not None:
            atomic_write_bytes(self.history_path, json.dumps(self.history, indent=1).encode())

    # -------------------------------------------------------------------------- views
    def status_dict(self) -> dict[str, Any]:
        with self._cond:
            st = self._status()
            now = self.clock()
            return {
                "phase": st.phase.value,
                "round": st.round,
                "completed_rounds": st.completed_rounds,
                "total_rounds": st.total_rounds,
                "deadline_unix": st.deadline_unix,
                "deadline_in_seconds": None
                if st.deadline_unix is None
                else round(max(0.0, st.deadline_unix - now), 3),
                "min_clients": st.min_clients,
                "scenarios": list(self.scenarios),
                "joined": st.joined,
                "live": st.live,
                "submitted": st.submitted,
                "waiting_for": st.message,
                "resumed_from_round": self.resumed_from,
                "method": self.spec.method,
                "preset": self.spec.preset,
                "seed": self.spec.seed,
                "spec_digest": self.spec_digest,
                "payload_bytes": sum(s.nbytes for s in self.signature),
                "state_checksum": self.state_checksum(),
                "strategy_checksum": self._strategy_digest,
            }

    def clients_dict(self) -> list[dict[str, Any]]:
        with self._cond:
            now = self.clock()
            m = self.machine
            out = []
            for s in self.scenarios:
                rec = m.clients.get(s)
                if rec is None:
                    out.append({"scenario": s, "joined": False})
                    continue
                out.append(
                    {
                        "scenario": s,
                        "joined": True,
                        "live": m.is_live(s, now),
                        "session": rec.session_id[:8],
                        "joins": rec.joins,
                        "joined_at": rec.joined_at,
                        "last_seen_seconds_ago": round(now - rec.last_seen, 3),
                        "num_train_samples": rec.num_train_samples,
                        "rounds": list(rec.rounds),
                        "submitted_current_round": s in m.submitted,
                        "bytes_in": rec.bytes_in,
                        "bytes_out": rec.bytes_out,
                        "final_fetched": rec.final_fetched,
                    }
                )
            return out

    def rounds_list(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self.history)

    def live_count(self) -> int:
        with self._cond:
            return len(self.machine.live(self.clock()))


class CheckpointFailure(RuntimeError):
    """The state of a completed round could not be made durable: the process must stop."""


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def round_line(record: Mapping[str, Any], total: int) -> str:
    t = record["timing"]
    return (
        f"round {record['round']:>3}/{total} closed ({record['closed_by']}): "
        f"{len(record['participants'])} clients [{' '.join(record['participants'])}]  "
        f"{t.get('wall_seconds', record['duration_seconds']):.2f}s = {t['critical_client']} "
        f"download {t['download_seconds']:.2f} + eval {t['evaluation_seconds']:.2f} + train "
        f"{t['local_training_seconds']:.2f} + upload {t['upload_seconds']:.2f} + other "
        f"{t['client_other_seconds']:.2f} | aggregate {t['aggregation_seconds']:.2f} + "
        f"checkpoint {t.get('checkpoint_seconds', 0.0):.2f}  "
        f"in {record['bytes_in'] / 1e6:.2f} MB  out {record['bytes_out'] / 1e6:.2f} MB"
    )
