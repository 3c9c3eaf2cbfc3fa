"""Local training loop and metrics."""

from msmtrec._lazy import lazy_exports

_EXPORTS = {
    "evaluate_predictions": "msmtrec.training.metrics",
    "mean_auc": "msmtrec.training.metrics",
    "task_metrics": "msmtrec.training.metrics",
    "FitResult": "msmtrec.training.trainer",
    "TrainConfig": "msmtrec.training.trainer",
    "Trainer": "msmtrec.training.trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
