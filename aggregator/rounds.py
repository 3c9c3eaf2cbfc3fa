"""The round state machine: when a round opens, when it closes, and what it waits for.

Pure logic over an explicit clock (no threads, no sockets, no tensors), so every rule is unit
tested with a fake clock. The caller holds a lock around it and acts on :meth:`decide`.

Rules (DESIGN.md "Federation protocol", and the lessons about hangs and timeouts):

* ``WAITING``: round 1 (or, after a restart, the next round) opens once ``min_clients``
  scenarios are joined and live, and either every expected scenario is joined or
  ``start_wait`` seconds have passed since ``min_clients`` was reached.
* ``OPEN``: the round closes as soon as every live joined client has submitted (and there
  are at least ``min_clients`` submissions), or at the deadline with at least
  ``min_clients`` submissions. With fewer at the deadline it is extended by another deadline
  and :meth:`message` says exactly what it waits for: never a silent wait.
* Partial participation: with ``participants`` (a pure function of the round number) only
  the clients it names for the open round may submit; the round waits for the live ones
  among them, and needs ``min(min_clients, len(sample))`` submissions.
* ``AGGREGATING``: the caller aggregates and checkpoints, then calls :meth:`finish_close`,
  which opens the next round at once or moves to ``FINISHED``.
* A client is *live* while its last call is younger than ``heartbeat_interval × patience``;
  a lost client is no longer waited for, and becomes live again on its next call.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    WAITING = "waiting_for_clients"
    OPEN = "open"
    AGGREGATING = "aggregating"
    FINISHED = "finished"


class Action(StrEnum):
    NONE = "none"
    OPEN = "open"
    CLOSE = "close"
    EXTEND = "extend"


@dataclass(frozen=True)
class RoundRules:
    expected: tuple[str, ...]
    total_rounds: int
    min_clients: int = 2
    start_wait: float = 30.0
    deadline: float = 600.0
    heartbeat_interval: float = 5.0
    heartbeat_patience: int = 3
    # round number → the clients sampled for it (None: every client takes part)
    participants: Callable[[int], tuple[str, ...]] | None = None

    @property
    def liveness_window(self) -> float:
        return self.heartbeat_interval * self.heartbeat_patience


@dataclass
class ClientRecord:
    scenario: str
    session_id: str
    joined_at: float
    last_seen: float
    num_train_samples: int = 0
    joins: int = 1
    rounds: list[int] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    final_fetched: bool = False
    final_reported: bool = False


class RoundMachine:
    """Phase, round number, joined clients and the open round's submitters."""

    def __init__(self, rules: RoundRules, completed_rounds: int, now: float) -> None:
        self.rules = rules
        self.completed = completed_rounds
        self.round = completed_rounds + 1
        self.phase = Phase.FINISHED if completed_rounds >= rules.total_rounds else Phase.WAITING
        self.clients: dict[str, ClientRecord] = {}
        self.submitted: dict[str, str] = {}  # scenario → submission digest (open round)
        self.opened_at: float | None = None
        self.deadline_at: float | None = None
        self.extensions = 0
        self.min_reached_at: float | None = None
        self.closing_reason = ""
        self.started_at = now
        self.sampled: tuple[str, ...] | None = None  # the open round's sample (None: all)

    # ------------------------------------------------------------------------- clients
    def join(self, scenario: str, now: float, num_train_samples: int = 0) -> ClientRecord:
        rec = self.clients.get(scenario)
        session = uuid.uuid4().hex
        if rec is None:
            rec = ClientRecord(scenario, session, now, now, num_train_samples)
            self.clients[scenario] = rec
        else:
            rec.session_id, rec.last_seen, rec.joins = session, now, rec.joins + 1
            rec.num_train_samples = num_train_samples or rec.num_train_samples
        return rec

    def touch(self, scenario: str, now: float) -> None:
        rec = self.clients.get(scenario)
        if rec is not None:
            rec.last_seen = max(rec.last_seen, now)

    def is_live(self, scenario: str, now: float) -> bool:
        rec = self.clients.get(scenario)
        return rec is not None and now - rec.last_seen <= self.rules.liveness_window

    def joined(self) -> list[str]:
        return sorted(self.clients)

    def live(self, now: float) -> list[str]:
        return [s for s in sorted(self.clients) if self.is_live(s, now)]

    def eligible(self, scenario: str) -> bool:
        """Whether ``scenario`` is sampled for the open round (always, without sampling)."""
        return self.sampled is None or scenario in self.sampled

    def needed(self) -> int:
        """Submissions the open round needs to close."""
        if self.sampled is None:
            return self.rules.min_clients
        return max(1, min(self.rules.min_clients, len(self.sampled)))

    # -------------------------------------------------------------------------- rounds
    def decide(self, now: float) -> Action:
        rules = self.rules
        if self.phase is Phase.WAITING:
            live = self.live(now)
            if len(live) < rules.min_clients:
                self.min_reached_at = None
                return Action.NONE
            if self.min_reached_at is None:
                self.min_reached_at = now
            everyone = set(rules.expected) <= set(live)
            if everyone or now - self.min_reached_at >= rules.start_wait:
                return Action.OPEN
            return Action.NONE
        if self.phase is Phase.OPEN:
            assert self.deadline_at is not None
            n = len(self.submitted)
            waiting = [s for s in self.live(now) if self.eligible(s) and s not in self.submitted]
            if n >= self.needed() and not waiting:
                self.closing_reason = "all_submitted"
                return Action.CLOSE
            if now >= self.deadline_at:
                if n >= self.needed():
                    self.closing_reason = "deadline"
                    return Action.CLOSE
                return Action.EXTEND
        return Action.NONE

    def open_round(self, now: float) -> int:
        self.phase = Phase.OPEN
        self.sampled = self.rules.participants(self.round) if self.rules.participants else None
        self.submitted = {}
        self.opened_at = now
        self.deadline_at = now + self.rules.deadline
        self.extensions = 0
        self.closing_reason = ""
        return self.round

    def extend(self, now: float) -> None:
        assert self.deadline_at is not None
        self.deadline_at = now + self.rules.deadline
        self.extensions += 1

    def record_submission(self, scenario: str, digest: str, now: float) -> None:
        self.submitted[scenario] = digest
        self.touch(scenario, now)

    def begin_close(self) -> list[str]:
        """Freeze the open round; returns its participants in client-id order."""
        self.phase = Phase.AGGREGATING
        return sorted(self.submitted)

    def abort_close(self, now: float) -> None:
        """Aggregation failed: reopen the same round with no submissions."""
        self.open_round(now)

    def finish_close(self, now: float) -> None:
        for s in self.submitted:
            if s in self.clients:
                self.clients[s].rounds.append(self.round)
        self.completed = self.round
        self.round += 1
        self.submitted = {}
        self.deadline_at = None
        if self.completed >= self.rules.total_rounds:
            self.phase = Phase.FINISHED
            self.opened_at = None
        else:
            self.open_round(now)

    # -------------------------------------------------------------------------- status
    def message(self, now: float) -> str:
        """What the federation is doing or waiting for, in one line."""
        rules = self.rules
        if self.phase is Phase.FINISHED:
            return f"finished after {self.completed} rounds; clients fetch their final models"
        if self.phase is Phase.AGGREGATING:
            return f"aggregating round {self.round}"
        live = self.live(now)
        if self.phase is Phase.WAITING:
            absent = [s for s in rules.expected if s not in live]
            text = (
                f"waiting for clients before round {self.round}: {len(live)}/"
                f"{len(rules.expected)} joined and live (min {rules.min_clients})"
            )
            if absent:
                text += f"; missing {', '.join(absent)}"
            if self.min_reached_at is not None and absent:
                left = max(0.0, self.min_reached_at + rules.start_wait - now)
                text += f"; starting without them in {left:.0f} s"
            return text
        assert self.deadline_at is not None
        live = [s for s in live if self.eligible(s)]
        waiting = [s for s in live if s not in self.submitted]
        left = self.deadline_at - now
        text = (
            f"round {self.round}/{rules.total_rounds}: {len(self.submitted)}/{len(live)} live "
            f"{'sampled ' if self.sampled is not None else ''}clients submitted"
        )
        if waiting:
            text += f" (waiting for {', '.join(waiting)})"
        lost = [
            s
            for s in self.clients
            if s not in live and s not in self.submitted and self.eligible(s)
        ]
        if lost:
            text += f"; lost {', '.join(sorted(lost))}"
        if self.extensions:
            text += (
                f"; deadline extended {self.extensions}x: {len(self.submitted)} of min "
                f"{self.needed()} submissions"
            )
        if self.sampled is not None:
            text += f"; sampled {', '.join(self.sampled)}"
        text += f"; deadline in {max(0.0, left):.0f} s"
        return text
