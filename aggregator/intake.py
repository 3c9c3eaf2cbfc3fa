"""What arrives from clients, checked before it may touch the federation's state.

Submissions (an accepted header, then the whole payload) and evaluation reports are turned
into plain validated values here; anything malformed is a :class:`Refusal` with a contract
reason. Nothing in this module holds state or a lock: :class:`~aggregator.federation.Federation`
calls it before taking its lock, so a refused call cannot change what it protects.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aggregator.errors import Reason, Refusal
from aggregator.records import TaskEval
from msmtrec.codec import (
    CodecError,
    SizeLimitError,
    TensorSpec,
    canonical_json,
    check_manifest,
    decode,
)

MAX_METRICS = 32
MAX_KEY_CHARS = 64
MAX_TASKS = 16
SPLITS = ("valid", "test", "train")


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
    """A whole, validated submission of one scenario for one round."""

    scenario: str
    round: int
    num_samples: int
    metrics: dict[str, float]
    params: dict[str, torch.Tensor]
    digest: str
    bytes_in: int
    upload_seconds: float
    received_at: float = 0.0


def finite_metrics(metrics: Mapping[str, float], what: str) -> dict[str, float]:
    """At most MAX_METRICS finite floats under 1-64 character keys."""
    if len(metrics) > MAX_METRICS:
        raise Refusal(Reason.BAD_METRICS, f"{what}: at most {MAX_METRICS} entries")
    out = {}
    for k, v in metrics.items():
        if not k or len(k) > MAX_KEY_CHARS:
            raise Refusal(
                Reason.BAD_METRICS, f"{what}: key {k[:80]!r} must be 1-{MAX_KEY_CHARS} chars"
            )
        if not math.isfinite(v):
            raise Refusal(Reason.BAD_METRICS, f"{what}: {k} is not finite")
        out[str(k)] = float(v)
    return out


def check_header(
    expected: Mapping[str, TensorSpec],
    specs: Sequence[TensorSpec],
    declared_total: int,
    max_payload_bytes: int,
    num_samples: int,
) -> None:
    """A submission header against the model signature and the size limit, before any byte."""
    try:
        check_manifest(specs, expected, declared_total=declared_total, max_bytes=max_payload_bytes)
    except SizeLimitError as exc:
        raise Refusal(Reason.TOO_LARGE, str(exc)) from exc
    except CodecError as exc:
        raise Refusal(Reason.BAD_MANIFEST, str(exc)) from exc
    if num_samples <= 0:
        raise Refusal(Reason.BAD_NUM_SAMPLES, "num_samples must be positive")


def decode_payload(ticket: UploadTicket, buffer: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a received payload (all finite) and the submission's digest, which
    covers the manifest, sample count, metrics and bytes (what makes a replay identical)."""
    try:
        params = decode(ticket.specs, buffer, check_finite=True)
    except CodecError as exc:
        raise Refusal(Reason.BAD_VALUES, str(exc)) from exc
    h = hashlib.sha256()
    h.update(canonical_json([[s.name, list(s.shape), s.dtype] for s in ticket.specs]).encode())
    h.update(canonical_json({"n": ticket.num_samples, "m": ticket.metrics}).encode())
    h.update(memoryview(buffer).cast("B"))
    return params, h.hexdigest()


def clean_evaluation(
    splits: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, TaskEval]]:
    """split → task → evaluation of a personalized model, checked field by field."""
    clean: dict[str, dict[str, TaskEval]] = {}
    for split, tasks in splits.items():
        if split not in SPLITS:
            raise Refusal(Reason.BAD_METRICS, f"unknown split {split!r}")
        if len(tasks) > MAX_TASKS:
            raise Refusal(Reason.BAD_METRICS, f"at most {MAX_TASKS} tasks per split")
        clean[split] = {}
        for task, m in tasks.items():
            if not task or len(task) > MAX_KEY_CHARS:
                raise Refusal(Reason.BAD_METRICS, "task names must be 1-64 characters")
            values = {}
            for key in ("auc", "logloss"):
                v = m.get(key)
                if v is not None and not math.isfinite(v):
                    raise Refusal(Reason.BAD_METRICS, f"{split}/{task}/{key} is not finite")
                values[key] = v
            clean[split][task] = TaskEval(
                **values, n=int(m.get("n", 0)), positives=int(m.get("positives", 0))
            )
    return clean
