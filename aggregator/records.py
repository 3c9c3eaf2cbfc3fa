"""One round's record: the one type of the history, the status API, metrics and log lines.

A :class:`RoundRecord` is built once when a round closes (:func:`build_record`), stored in
the history (``history.json`` and every checkpoint, as JSON), served as-is by
``GET /v1/rounds`` (it is the response model), observed by the Prometheus hooks and printed
by :func:`round_line`. Readers use its fields, never string keys, so a renamed field fails
where it is read, not in a dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from aggregator.intake import Submission

_RECORD_CONFIG = ConfigDict(extra="ignore")  # a newer writer's extra keys do not break a reader


class TaskEval(BaseModel):
    """One task of a personalized model on one split, as the client measured it."""

    model_config = _RECORD_CONFIG
    auc: float | None = Field(None, description="None when a split has one class only")
    logloss: float | None = None
    n: int = 0
    positives: int = 0


class RoundClient(BaseModel):
    """One scenario in one round: its submission (if it took part) and its evaluation."""

    model_config = _RECORD_CONFIG
    participated: bool
    num_samples: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    upload_seconds: float | None = None
    download_seconds: float | None = None
    metrics: dict[str, float] | None = Field(None, description="local training metrics")
    submission_sha256: str | None = None
    eval: dict[str, dict[str, TaskEval]] | None = Field(
        None, description="split → task → evaluation of the personalized model this round made"
    )
    client_timings: dict[str, float] | None = None
    publish_error: str | None = Field(
        None, description="why the client's registry publish failed (e.g. a full disk)"
    )


class RoundTiming(BaseModel):
    """wall_seconds (open → next open) split along the critical path: the last submitter's
    download, evaluation, local training, upload and other seconds, then the close latency,
    aggregation and checkpoint; plus the slowest training and transfer of any client."""

    model_config = _RECORD_CONFIG
    critical_client: str
    download_seconds: float
    evaluation_seconds: float
    local_training_seconds: float
    upload_seconds: float
    client_other_seconds: float
    close_latency_seconds: float
    aggregation_seconds: float
    local_training_seconds_max: float
    transfer_seconds_max: float
    checkpoint_seconds: float | None = Field(None, description="set once the checkpoint is durable")
    wall_seconds: float | None = Field(None, description="set once the next round opened")


class ConflictAverseWeights(BaseModel):
    """One expert's conflict-averse plan: its step size ``c`` and the clients' weights w*
    (None where the plan fell back to the plain mean)."""

    model_config = _RECORD_CONFIG
    c: float
    w: dict[str, float] | None = None


class LearnFrom(BaseModel):
    """Who learns from whom: ``part[c][j]`` is the weight with which client j's delta
    entered client c's new parameters beyond c's own (rows are learners)."""

    model_config = _RECORD_CONFIG
    experts: dict[str, dict[str, float]] | None = Field(
        None, description="mean over experts of a_{c,k}·m_{k,j} (conflict-averse mixing)"
    )
    towers: dict[str, dict[str, float]] | None = Field(
        None, description="mean over tower layers of b_{c,l}·attention_{c,j}"
    )


class PersonalizationReport(BaseModel):
    """What the server's personalization did in a round: the core's ``Strategy.last_report``
    (msmtrec.federation.strategy), typed. Absent for methods without server-side
    personalization (FedAvg and friends)."""

    model_config = _RECORD_CONFIG
    round: int | None = None
    clients: list[str] = Field(default_factory=list, description="the aggregated clients")
    a: dict[str, list[float]] | None = Field(
        None, description="client → effective expert weight a_{c,k}, one per expert"
    )
    b: dict[str, dict[str, float]] | None = Field(
        None, description="client → tower layer → effective tower weight b_{c,l}"
    )
    ca: dict[str, ConflictAverseWeights] | None = Field(
        None, description="expert index → conflict-averse plan"
    )
    learn_from: LearnFrom | None = None


class RoundRecord(BaseModel):
    """A completed round."""

    model_config = _RECORD_CONFIG
    round: int
    opened_at: float
    closed_at: float
    duration_seconds: float
    closed_by: str = Field(description="all_submitted | deadline")
    deadline_extensions: int
    resumed_after_restart: bool
    participants: list[str]
    not_submitted: list[str]
    num_samples: int
    bytes_in: int
    bytes_out: int
    aggregation_seconds: float
    checkpoint_seconds: float | None = None
    timing: RoundTiming
    personalization: PersonalizationReport | None = Field(
        None,
        description="the server's personalization this round (who learns from whom); "
        "None for methods without it",
    )
    state_checksum: str = Field(description="digest of the Strategy's state after this round")
    clients: dict[str, RoundClient]
    sampled: list[str] | None = Field(
        None, description="partial participation: the clients this round sampled (null: all)"
    )
    dp_epsilon: dict[str, float] = Field(
        default_factory=dict,
        description="differential privacy: ε each private client reports having spent so far "
        "(scenario → ε, from its submission's dp_epsilon; docs/PRIVACY.md)",
    )

    def to_json_dict(self) -> dict:
        """The JSON form stored in history.json and in checkpoints."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class ClosingRound:
    """What the round machine knew when it closed a round: the input of its record."""

    round: int
    submissions: Sequence[Submission]
    opened_at: float
    closed_at: float
    closed_by: str
    extensions: int
    not_submitted: Sequence[str]
    downloads: Mapping[str, Mapping[str, float]]  # scenario → bytes, seconds, count
    resumed_after_restart: bool
    sampled: Sequence[str] | None = None  # partial participation (None: every client)


def build_record(
    closing: ClosingRound,
    aggregation_seconds: float,
    state_checksum: str,
    personalization: Mapping[str, Any] | None = None,
) -> RoundRecord:
    """The record of a round whose aggregation just finished (checkpoint still to come);
    ``personalization`` is the Strategy's ``last_report`` of that aggregation."""
    clients: dict[str, RoundClient] = {}
    for s in closing.submissions:
        d = closing.downloads.get(s.scenario, {})
        clients[s.scenario] = RoundClient(
            participated=True,
            num_samples=s.num_samples,
            bytes_in=s.bytes_in,
            bytes_out=int(d.get("bytes", 0)),
            upload_seconds=round(s.upload_seconds, 6),
            download_seconds=round(float(d.get("seconds", 0.0)), 6),
            metrics=s.metrics,
            submission_sha256=s.digest,
        )
    for name in closing.not_submitted:
        d = closing.downloads.get(name, {})
        clients[name] = RoundClient(participated=False, bytes_out=int(d.get("bytes", 0)))
    train = [s.metrics.get("train_seconds", 0.0) for s in closing.submissions]
    transfer = [
        (clients[s.scenario].upload_seconds or 0.0) + (clients[s.scenario].download_seconds or 0.0)
        for s in closing.submissions
    ]
    # The round's critical path is its last submitter: split its time since the round
    # opened into download, evaluation of the previous round's model, local training,
    # upload, and the rest (polling, waiting for the round to open for it, start-up).
    last = max(closing.submissions, key=lambda s: s.received_at)
    c = clients[last.scenario]
    on_path = max(0.0, last.received_at - closing.opened_at)
    parts = {
        "download_seconds": c.download_seconds or 0.0,
        "evaluation_seconds": float(last.metrics.get("eval_seconds", 0.0)),
        "local_training_seconds": float(last.metrics.get("train_seconds", 0.0)),
        "upload_seconds": c.upload_seconds or 0.0,
    }
    parts["client_other_seconds"] = max(0.0, on_path - sum(parts.values()))
    return RoundRecord(
        round=closing.round,
        opened_at=closing.opened_at,
        closed_at=closing.closed_at,
        duration_seconds=round(closing.closed_at - closing.opened_at, 6),
        closed_by=closing.closed_by,
        deadline_extensions=closing.extensions,
        resumed_after_restart=closing.resumed_after_restart,
        participants=[s.scenario for s in closing.submissions],
        not_submitted=list(closing.not_submitted),
        num_samples=sum(s.num_samples for s in closing.submissions),
        bytes_in=sum(c.bytes_in or 0 for c in clients.values()),
        bytes_out=sum(c.bytes_out or 0 for c in clients.values()),
        aggregation_seconds=round(aggregation_seconds, 6),
        timing=RoundTiming(
            critical_client=last.scenario,
            **{k: round(v, 6) for k, v in parts.items()},
            close_latency_seconds=round(max(0.0, closing.closed_at - last.received_at), 6),
            aggregation_seconds=round(aggregation_seconds, 6),
            local_training_seconds_max=round(max(train, default=0.0), 6),
            transfer_seconds_max=round(max(transfer, default=0.0), 6),
        ),
        state_checksum=state_checksum,
        clients=clients,
        sampled=list(closing.sampled) if closing.sampled is not None else None,
        personalization=(
            PersonalizationReport.model_validate(dict(personalization)) if personalization else None
        ),
        dp_epsilon={
            s.scenario: s.metrics["dp_epsilon"]
            for s in closing.submissions
            if "dp_epsilon" in s.metrics
        },
    )


def fmt_auc(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def round_line(record: RoundRecord, total: int) -> str:
    """The aggregator's one log line per closed round (and what ``msmtrec up`` shows)."""
    t = record.timing
    wall = t.wall_seconds if t.wall_seconds is not None else record.duration_seconds
    return (
        f"round {record.round:>3}/{total} closed ({record.closed_by}): "
        f"{len(record.participants)} clients [{' '.join(record.participants)}]  "
        f"{wall:.2f}s = {t.critical_client} "
        f"download {t.download_seconds:.2f} + eval {t.evaluation_seconds:.2f} + train "
        f"{t.local_training_seconds:.2f} + upload {t.upload_seconds:.2f} + other "
        f"{t.client_other_seconds:.2f} | aggregate {t.aggregation_seconds:.2f} + "
        f"checkpoint {t.checkpoint_seconds or 0.0:.2f}  "
        f"in {record.bytes_in / 1e6:.2f} MB  out {record.bytes_out / 1e6:.2f} MB"
    )
