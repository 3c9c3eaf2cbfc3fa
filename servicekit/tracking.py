"""Experiment tracking: TensorBoard event files of a federation's rounds.

Why tensorboardX and not ``torch.utils.tensorboard``: both write the same event files, but
torch's writer needs the ``tensorboard`` package (its web server, werkzeug, markdown, grpcio
pins...) just to write them, while tensorboardX needs only numpy and protobuf, which the
project already has. Reading the files needs TensorBoard itself (``pip install tensorboard;
tensorboard --logdir DIR``), on any machine, not this one.

Tags (one step per round): ``auc/<split>/<scenario>/<task>``, ``loss/train/<scenario>``,
``bytes/in``, ``bytes/out``, ``seconds/round``, ``personalization/a/<scenario>/expert<k>``,
``personalization/b/<scenario>/<layer>``, ``learn_from/<part>/<learner>/<source>``
(``Strategy.last_report``, docs/FEDERATION.md). Used by ``msmtrec simulate --tensorboard``
and the aggregator's ``--tensorboard`` (its layers map their records onto these calls).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TensorBoardTracker:
    """Writes scalars under ``logdir`` (created if missing). Not thread-safe by itself."""

    def __init__(self, logdir: Path) -> None:
        from tensorboardX import SummaryWriter

        Path(logdir).mkdir(parents=True, exist_ok=True)
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=5)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """One value; None and non-finite values (an AUC of a one-class split) are skipped."""
        if value is None:
            return
        value = float(value)
        if math.isfinite(value):
            self.writer.add_scalar(tag, value, global_step=step)

    def auc(self, step: int, split: str, scenario: str, per_task: Mapping[str, Any]) -> None:
        """``per_task``: task → AUC, or task → {"auc": …} as the records hold it."""
        for task, m in per_task.items():
            value = m.get("auc") if isinstance(m, Mapping) else getattr(m, "auc", m)
            self.scalar(f"auc/{split}/{scenario}/{task}", value, step)

    def personalization(self, step: int, report: Mapping[str, Any] | None) -> None:
        """The server's personalization report of one round (a, b, learn_from)."""
        if not report:
            return
        for scenario, weights in (report.get("a") or {}).items():
            for k, w in enumerate(weights):
                self.scalar(f"personalization/a/{scenario}/expert{k}", w, step)
        for scenario, layers in (report.get("b") or {}).items():
            for layer, w in layers.items():
                self.scalar(f"personalization/b/{scenario}/{layer}", w, step)
        for part, rows in (report.get("learn_from") or {}).items():
            for learner, row in (rows or {}).items():
                for source, w in row.items():
                    self.scalar(f"learn_from/{part}/{learner}/{source}", w, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
