"""The federation's membership calls: which scenarios belong, joins (spec and model
signature checked), heartbeats and their long polls, and the downloads of a round's
payloads. A part of :class:`~aggregator.federation.Federation` (a mixin: it works on the
federation's state under the federation's lock)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aggregator.answers import Payload, Status
from aggregator.errors import Reason, Refusal
from aggregator.hooks import Hooks
from aggregator.rounds import Phase, RoundMachine
from msmtrec.codec import Encoded, TensorSpec, compare_signatures, encode

if TYPE_CHECKING:
    from msmtrec.federation.strategy import Strategy
    from msmtrec.spec import FederationSpec

log = logging.getLogger("aggregator")


class Membership:
    """Joins, heartbeats and downloads (see :class:`~aggregator.federation.Federation`)."""

    # state of the Federation this part works on (set by Federation.__init__)
    _cond: threading.Condition
    machine: RoundMachine
    clock: Callable[[], float]
    hooks: Hooks
    scenarios: tuple[str, ...]
    spec: FederationSpec
    spec_digest: str
    expected: dict[str, TensorSpec]
    heartbeat_interval: float
    chunk_bytes: int
    max_payload_bytes: int
    max_poll: float
    _stopping: bool
    _downloads: dict[str, dict[str, float]]
    _payloads: dict[tuple[str, int], Encoded]
    strategy: Strategy
    _status: Callable[..., Status]

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
