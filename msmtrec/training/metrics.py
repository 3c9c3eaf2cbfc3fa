"""Per-task evaluation metrics (scikit-learn's AUC and log-loss).

A task whose evaluated labels hold one class only has no AUC: it is reported as ``None``
rather than crashing or being silently replaced by 0.5. Means over scenarios are means of
per-scenario AUCs (macro), which is not a pooled AUC; the tables say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TaskMetrics = dict[str, Any]  # {"auc": float|None, "logloss": float, "n": int, "positives": int}


def task_metrics(labels: np.ndarray, probs: np.ndarray) -> TaskMetrics:
    from sklearn.metrics import log_loss, roc_auc_score  # seconds to import; only when used

    labels = np.asarray(labels).astype(np.int64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    n, pos = len(labels), int(labels.sum())
    auc = float(roc_auc_score(labels, probs)) if 0 < pos < n else None
    ll = float(log_loss(labels, probs, labels=[0, 1])) if n else None
    return {"auc": auc, "logloss": ll, "n": n, "positives": pos}


def evaluate_predictions(
    labels: np.ndarray, probs: np.ndarray, tasks: Sequence[str]
) -> dict[str, TaskMetrics]:
    return {t: task_metrics(labels[:, i], probs[:, i]) for i, t in enumerate(tasks)}


def mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values (an undefined AUC is skipped, not counted as 0.5)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def mean_auc(per_scenario: Mapping[str, Mapping[str, TaskMetrics]]) -> float | None:
    """Macro mean of AUC over scenarios × tasks."""
    return mean_defined(m["auc"] for tasks in per_scenario.values() for m in tasks.values())
