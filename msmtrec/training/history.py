"""One round's record of a training run and its console line.

Lives in the training layer, below ``federation`` and ``simulation``, because both write it:
the in-process federation (``msmtrec.simulation``) and the pooled references of the method
registry (``msmtrec.federation.methods.central*``), which the core-layers contract forbids
from importing the simulation. ``msmtrec.simulation`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from msmtrec.training.metrics import TaskMetrics, mean_auc

Log = Callable[[str], None]


@dataclass
class RoundRecord:
    round: int
    seconds: float
    train_loss: dict[str, float]
    valid: dict[str, dict[str, TaskMetrics]]
    test: dict[str, dict[str, TaskMetrics]]
    mean_valid_auc: float | None
    mean_test_auc: float | None
    # What the server's personalization did this round (Strategy.last_report: a, b, the
    # conflict-averse weights, who learns from whom); None for methods without it.
    personalization: dict[str, Any] | None = None
    # ε spent so far per scenario (private training only)
    epsilon: dict[str, float] = field(default_factory=dict)


def fmt_metric(v: float | None) -> str:
    """A metric with four decimals, ``n/a`` when it is undefined (one class only)."""
    return "n/a" if v is None else f"{v:.4f}"


def round_line(rec: RoundRecord, total: int, tasks: tuple[str, ...]) -> str:
    per_task = []
    for t in tasks:
        vals = [rec.valid[s][t]["auc"] for s in rec.valid if rec.valid[s][t]["auc"] is not None]
        per_task.append(f"{t} {fmt_metric(sum(vals) / len(vals) if vals else None)}")
    loss = sum(rec.train_loss.values()) / max(len(rec.train_loss), 1)
    scen = " ".join(f"{s}:{fmt_metric(mean_auc({s: rec.valid[s]}))}" for s in rec.valid)
    eps = f"  max ε {max(rec.epsilon.values()):.3f}" if rec.epsilon else ""
    return (
        f"round {rec.round:>3}/{total}  loss {loss:.4f}  valid AUC {' '.join(per_task)}  "
        f"mean {fmt_metric(rec.mean_valid_auc)}  [{scen}]  {rec.seconds:.1f}s{eps}"
    )
