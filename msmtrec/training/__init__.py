"""Local training loop and metrics."""

from msmtrec.training.metrics import evaluate_predictions, mean_auc, task_metrics
from msmtrec.training.trainer import FitResult, TrainConfig, Trainer

__all__ = [
    "FitResult",
    "TrainConfig",
    "Trainer",
    "evaluate_predictions",
    "mean_auc",
    "task_metrics",
]
