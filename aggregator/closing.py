"""Closing a round: aggregation, the round's record and its durable checkpoint, or rollback.

The only code that changes the aggregator's Strategy. :meth:`RoundCloser.close` either
returns the new round's record after its checkpoint is on disk, or returns None after a
failed aggregation, with the Strategy reloaded from the last checkpoint (so nothing
changed and the round can be reopened). A checkpoint that cannot be written after
:attr:`RoundCloser.attempts` tries (``--checkpoint-attempts``, default
:data:`CHECKPOINT_ATTEMPTS`) is a :class:`CheckpointFailure`: the process stops with
exit code 3 and a restart resumes from the last durable round (docs/RELIABILITY.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import torch

from aggregator.checkpoint import CheckpointStore
from aggregator.history import History
from aggregator.records import ClosingRound, RoundRecord, build_record
from msmtrec.codec import tensors_digest, with_meta
from msmtrec.faults import fault_point
from msmtrec.federation.strategy import ClientUpdate, Strategy
from msmtrec.spec import FederationSpec
from msmtrec.spill import SpillDir

log = logging.getLogger("aggregator")

CHECKPOINT_ATTEMPTS = 3


class CloseFailure(RuntimeError):
    """A round could not be closed consistently (its Strategy state already changed, or it
    could not be made durable): the process must stop, and a restart resumes from the last
    checkpoint (exit code 3, docs/RELIABILITY.md)."""


class CheckpointFailure(CloseFailure):
    """The state of a completed round could not be made durable."""


def _storage_error(exc: BaseException) -> bool:
    """An error of the disk itself: an OSError, or safetensors' own error wrapping one
    (``SafetensorError: Error while serializing: I/O error: No space left on device (os
    error 28)``; older versions say ``IoError(Os { code: 28, ...``)."""
    text = str(exc)
    return isinstance(exc, OSError) or "(os error " in text or "IoError(Os" in text


class RoundCloser:
    """The Strategy, and what turns a closed round's submissions into its next state."""

    def __init__(
        self, spec: FederationSpec, store: CheckpointStore, spill: SpillDir | None = None
    ) -> None:
        self.spec = spec
        self.spill = spill
        self.spec_digest = spec.digest()
        self.store = store
        self.strategy = Strategy(spec.federation(), spec.initial_state(), spill)
        self.retry_seconds = 1.0
        self.attempts = CHECKPOINT_ATTEMPTS
        # Why the last checkpoint write failed while it is still being retried (None once a
        # write succeeds): shown as storage_problem by /v1/status.
        self.problem: str | None = None
        self.cancelled = threading.Event()  # set on shutdown: stop retrying at once
        # Aggregations of the current round that failed in a row: a round whose aggregation
        # keeps failing is reopened at most `attempts` times, then the process stops (exit 3)
        # instead of reopening it forever (a 16-client run looped so, growing to 20 GB).
        self.failed_aggregations = 0

    def state_digest(self) -> str:
        tensors, meta = self.strategy.state_dict()
        return tensors_digest(tensors, meta)

    def close(self, closing: ClosingRound, history: History) -> RoundRecord | None:
        """Aggregate ``closing``'s submissions and checkpoint the result (see module doc)."""
        round_number = closing.round
        start = time.perf_counter()
        updates = [
            ClientUpdate(s.scenario, s.num_samples, s.params, dict(s.metrics))
            for s in closing.submissions
        ]
        fault_point("aggregator.aggregate", round_number)
        try:
            self.strategy.aggregate(updates)
        except Exception as exc:
            self.failed_aggregations += 1
            self.reload()
            if self.failed_aggregations >= self.attempts:
                raise CloseFailure(
                    f"aggregation of round {round_number} failed {self.failed_aggregations} "
                    f"times in a row ({type(exc).__name__}: {exc}); stopping instead of "
                    "reopening the round again"
                ) from exc
            log.exception(
                "aggregation of round %d failed (%d of %d); reopening the round",
                round_number, self.failed_aggregations, self.attempts,
            )  # fmt: skip
            return None
        self.failed_aggregations = 0
        aggregation_seconds = time.perf_counter() - start
        ckpt_start = time.perf_counter()
        tensors, meta = self.strategy.state_dict()
        digest_of_tensors = tensors_digest(tensors)
        record = build_record(
            closing,
            aggregation_seconds,
            with_meta(digest_of_tensors, meta),
            personalization=self.strategy.last_report,
        )
        state = {
            "strategy": meta,
            "completed_rounds": self.strategy.round,
            "history": history.state_with(record),
            "spec": self.spec.to_dict(),
            "spec_digest": self.spec_digest,
        }
        self._save_checkpoint(tensors, state, digest_of_tensors)
        fault_point("aggregator.between_rounds", round_number)
        record.checkpoint_seconds = round(time.perf_counter() - ckpt_start, 6)
        record.timing.checkpoint_seconds = record.checkpoint_seconds
        return record

    def _save_checkpoint(
        self, tensors: Mapping[str, torch.Tensor], state: dict, digest_of_tensors: str
    ) -> None:
        """Retry any failure (an OSError, or safetensors' own error on a full disk), then
        give up with :class:`CheckpointFailure`: a round is never reported done unless it
        is durable."""
        round_number = self.strategy.round
        for attempt in range(1, self.attempts + 1):
            try:
                self.store.save(round_number, tensors, state, digest_of_tensors)
            except Exception as exc:
                self.problem = (
                    f"the checkpoint of round {round_number} could not be written (attempt "
                    f"{attempt} of {self.attempts}): {type(exc).__name__}: {exc}"
                )
                # One line per attempt; a traceback only for the first failure that is not
                # the disk refusing (a full disk is an operator's problem, not a bug).
                trace = attempt == 1 and not _storage_error(exc)
                log.error("%s", self.problem, exc_info=exc if trace else None)
                if attempt < self.attempts and self.cancelled.wait(self.retry_seconds):
                    break  # stopping: the round is not durable, a restart re-runs it
                continue
            if self.problem is not None:
                log.info("the checkpoint of round %d is written after all", round_number)
            self.problem = None
            return
        raise CheckpointFailure(
            f"could not write the checkpoint of round {round_number} to {self.store.dir} "
            f"after {self.attempts} attempts; the previous checkpoint is intact"
        )

    def reload(self) -> None:
        """The Strategy as of the last checkpoint (or the initial one)."""
        fresh = Strategy(self.spec.federation(), self.spec.initial_state(), self.spill)
        ckpt = self.store.load_latest()
        if ckpt is not None:
            fresh.load_state_dict(ckpt.tensors, ckpt.state["strategy"])
        self.strategy = fresh
