"""The history of completed rounds and its file, ``history.json``.

Why a file besides the checkpoints: client evaluations of a round arrive after that round's
checkpoint was written, so they would be lost on a restart. ``history.json`` is rewritten
(atomically) whenever a record changes; on start the records of the newest checkpoint are
merged with it where the round's state checksum matches (the same round of the same run).
Not thread-safe by itself: the federation calls it under its lock.
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


class History:
    """Completed rounds in order, mirrored to ``path`` (None: in memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.records: list[RoundRecord] = []

    def restore(self, stored: Iterable[dict[str, Any]]) -> None:
        """Records from a checkpoint's state, completed by the sidecar file where it matches."""
        self.records = [RoundRecord.model_validate(r) for r in stored]
        by_round = {r.round: r for r in self._read_sidecar()}
        for i, rec in enumerate(self.records):
            other = by_round.get(rec.round)
            if other is not None and other.state_checksum == rec.state_checksum:
                self.records[i] = other

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
        self.write()

    def state_with(self, record: RoundRecord) -> list[dict[str, Any]]:
        """The JSON history a checkpoint of ``record``'s round stores."""
        return [r.to_json_dict() for r in (*self.records, record)]

    def snapshot(self) -> list[RoundRecord]:
        """Copies, safe to hand out of the lock."""
        return [r.model_copy(deep=True) for r in self.records]

    def write(self) -> None:
        if self.path is not None:
            doc = [r.to_json_dict() for r in self.records]
            atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode())
