"""``--tensorboard DIR``: the aggregator's rounds as TensorBoard event files.

A :class:`~aggregator.hooks.Hooks` that forwards everything to the metrics exporter and
writes, per round (step = round number): bytes in/out, wall seconds, each participant's
training loss, the server's personalization report when the round closes, and each
scenario's AUC per split and task when its client reports the evaluation (later than the
close: it is the model the round produced). Tags: servicekit.tracking.
"""

from __future__ import annotations

import threading

from aggregator.hooks import Hooks
from aggregator.records import RoundRecord
from servicekit.tracking import TensorBoardTracker


class TensorBoardHooks:
    """``inner``'s hooks plus event files under ``tracker.logdir``."""

    def __init__(self, inner: Hooks, tracker: TensorBoardTracker) -> None:
        self.inner = inner
        self.tracker = tracker
        self._lock = threading.Lock()  # gRPC worker threads report evaluations concurrently

    def rejected(self, rpc: str, reason: str) -> None:
        self.inner.rejected(rpc, reason)

    def bytes_in(self, scenario: str, n: int) -> None:
        self.inner.bytes_in(scenario, n)

    def bytes_out(self, scenario: str, n: int) -> None:
        self.inner.bytes_out(scenario, n)

    def round_closed(self, record: RoundRecord) -> None:
        self.inner.round_closed(record)
        step, t = record.round, self.tracker
        with self._lock:
            t.scalar("bytes/in", record.bytes_in, step)
            t.scalar("bytes/out", record.bytes_out, step)
            wall = record.timing.wall_seconds
            t.scalar("seconds/round", wall if wall is not None else record.duration_seconds, step)
            for scenario, client in record.clients.items():
                if client.metrics:
                    t.scalar(f"loss/train/{scenario}", client.metrics.get("train_loss"), step)
            if record.personalization is not None:
                t.personalization(step, record.personalization.model_dump(exclude_none=True))
            t.flush()

    def evaluation_reported(self, round_number: int, scenario: str, evals: dict) -> None:
        self.inner.evaluation_reported(round_number, scenario, evals)
        with self._lock:
            for split, per_task in evals.items():
                self.tracker.auc(round_number, split, scenario, per_task)
            self.tracker.flush()

    def close(self) -> None:
        self.tracker.close()
