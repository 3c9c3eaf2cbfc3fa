"""The history of completed rounds and its file, ``history.json``.

Why a file besides the checkpoints: client evaluations of a round arrive after that round's
checkpoint was written, so they would be lost on a restart. ``history.json`` is rewritten
(atomically) whenever a record changes; on start the records of the newest checkpoint are
merged with it where the round's state checksum matches (the same round of the same run).
Not thread-safe by itself: the federation calls it under its lock.

Bounded growth: a checkpoint carries only the last :data:`CHECKPOINT_RECORDS` records (its
round's among them), not the whole history, and ``history.json`` keeps the last
``retention`` records. On start the older records come from ``history.json`` when it
agrees with the checkpoint on the rounds both hold (the same run). A ``history.json`` that
cannot be written (a full disk) is logged and reported (:attr:`History.write_error`), never
fatal: the checkpoint, not this file, makes a round durable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aggregator.checkpoint import atomic_write_bytes
from aggregator.records import RoundRecord

log = logging.getLogger("aggregator")

CHECKPOINT_RECORDS = 8  # records a checkpoint carries: O(1) per checkpoint, not O(rounds)
DEFAULT_RETENTION = 1000  # records kept in history.json (AggregatorSettings.history_rounds)


class History:
    """Completed rounds in order, mirrored to ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None = None, retention: int = DEFAULT_RETENTION) -> None:
        if retention < 1:
            raise ValueError("history retention must be >= 1")
        self.path = path
        self.retention = retention
        self.records: list[RoundRecord] = []
        self.write_error: str | None = None

    def restore(self, stored: Iterable[dict[str, Any]]) -> None:
        """Records from a checkpoint's state (its last few rounds), completed by the sidecar
        file where it matches, and preceded by the sidecar's older rounds when the sidecar
        agrees with the checkpoint on every round both hold."""
        tail = [RoundRecord.model_validate(r) for r in stored]
        side = self._read_sidecar()
        by_round = {r.round: r for r in side}
        shared = [(r, by_round[r.round]) for r in tail if r.round in by_round]
        same_run = bool(shared) and all(a.state_checksum == b.state_checksum for a, b in shared)
        first = tail[0].round if tail else None
        older = [r for r in side if first is not None and r.round < first] if same_run else []
        if side and not same_run and first is not None and any(r.round < first for r in side):
            log.warning(
                "%s does not match the checkpoint's rounds: its older records are not used",
                self.path,
            )
        self.records = older + [
            by_round[r.round] if same_run and r.round in by_round else r for r in tail
        ]
        self._trim()

    def _read_sidecar(self) -> list[RoundRecord]:
        if self.path is None or not self.path.is_file():
            return []
        try:
            raw = json.loads(self.path.read_text())
            return [RoundRecord.model_validate(r) for r in raw if isinstance(r, dict)]
        except (OSError, json.JSONDecodeError, ValidationError, TypeError):
            log.warning("ignoring unreadable %s", self.path)
            return []

    def find(self, round_number: int) -> RoundRecord | None:
        return next((r for r in self.records if r.round == round_number), None)

    def append(self, record: RoundRecord) -> None:
        self.records.append(record)
        self._trim()
        self.write()

    def _trim(self) -> None:
        if len(self.records) > self.retention:
            del self.records[: len(self.records) - self.retention]

    def state_with(self, record: RoundRecord) -> list[dict[str, Any]]:
        """The JSON history a checkpoint of ``record``'s round stores: its last few rounds
        (bounded, whatever the number of rounds), ``record`` last."""
        recent = [*self.records[-(CHECKPOINT_RECORDS - 1) :], record]
        return [r.to_json_dict() for r in recent]

    def snapshot(self) -> list[RoundRecord]:
        """Copies, safe to hand out of the lock."""
        return [r.model_copy(deep=True) for r in self.records]

    def write(self) -> bool:
        """Rewrite the file; False (logged, :attr:`write_error` set) if the disk refused."""
        if self.path is None:
            return True
        doc = [r.to_json_dict() for r in self.records]
        try:
            atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            if self.write_error is None:
                log.error("cannot write %s (%s); the round history is kept in memory and in "
                          "the checkpoints until it can", self.path, exc)  # fmt: skip
            self.write_error = f"cannot write history.json: {exc.strerror or exc}"
            return False
        if self.write_error is not None:
            log.info("%s written again", self.path)
        self.write_error = None
        return True
