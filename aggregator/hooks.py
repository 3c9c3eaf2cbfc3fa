"""What the federation reports as it works, for the metrics exporter (aggregator.metrics).

A protocol rather than a dependency, so the federation runs (in tests, in tools) without
Prometheus, and the exporter reads typed :class:`~aggregator.records.RoundRecord` fields.
"""

from __future__ import annotations

from typing import Protocol

from aggregator.records import RoundRecord


class Hooks(Protocol):
    """What the metrics exporter wants to hear about (see aggregator.metrics)."""

    def rejected(self, rpc: str, reason: str) -> None: ...
    def bytes_in(self, scenario: str, n: int) -> None: ...
    def bytes_out(self, scenario: str, n: int) -> None: ...
    def round_closed(self, record: RoundRecord) -> None: ...
    def evaluation_reported(self, round_number: int, scenario: str, evals: dict) -> None: ...


class NoHooks:
    def rejected(self, rpc: str, reason: str) -> None:
        pass

    def bytes_in(self, scenario: str, n: int) -> None:
        pass

    def bytes_out(self, scenario: str, n: int) -> None:
        pass

    def round_closed(self, record: RoundRecord) -> None:
        pass

    def evaluation_reported(self, round_number: int, scenario: str, evals: dict) -> None:
        pass
