"""Local training and evaluation of one scenario's model.

Batches are taken by indexing whole tensors with a seeded permutation: no DataLoader, no
per-row Python work. The optimizer (Adam) is created fresh for every ``fit`` call [chosen]:
after the server replaces the shared parameters, the old moment estimates no longer describe
them, and a stateless round keeps a restarted client identical to one that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from msmtrec.data.dataset import ScenarioData
from msmtrec.model.mmoe import MultiTaskMMoE
from msmtrec.training.config import TrainConfig
from msmtrec.training.metrics import TaskMetrics, evaluate_predictions

__all__ = ["FitResult", "TrainConfig", "Trainer"]


@dataclass
class FitResult:
    num_samples: int
    steps: int
    loss: float  # mean task BCE over the round (without the regularizer)
    seconds: float


class TensorData:
    """A split's arrays as torch tensors (zero-copy views of the numpy arrays)."""

    def __init__(self, data: ScenarioData) -> None:
        self.categorical = torch.from_numpy(np.ascontiguousarray(data.categorical))
        self.numerical = torch.from_numpy(np.ascontiguousarray(data.numerical))
        self.labels = torch.from_numpy(np.ascontiguousarray(data.labels))
        self.raw_labels = data.labels

    def __len__(self) -> int:
        return len(self.labels)


class Trainer:
    """Fits and evaluates one model; the regularizer (μ/2)‖θ_shared − θ_start‖² anchors the
    tensors that leave the client to where the round started (PF-MSMTrec §6, FedProx), and
    ``shrink`` {name: λ} adds (λ/2)‖θ‖² on chosen tensors (the template's specific parts)."""

    def __init__(self, model: MultiTaskMMoE, config: TrainConfig | None = None) -> None:
        self.model = model
        self.config = config or TrainConfig()

    @staticmethod
    def _tensors(data: ScenarioData) -> TensorData:
        """Torch views of a split, made once and kept with the split itself."""
        cached = data.__dict__.get("_tensor_views")
        if cached is None:
            cached = data.__dict__["_tensor_views"] = TensorData(data)
        return cached

    def fit(
        self,
        data: ScenarioData,
        *,
        seed: int,
        epochs: int | None = None,
        anchor: Mapping[str, torch.Tensor] | None = None,
        mu: float = 0.0,
        shrink: Mapping[str, float] | None = None,
        progress: bool = False,
        desc: str = "train",
    ) -> FitResult:
        cfg = self.config
        epochs = cfg.local_epochs if epochs is None else epochs
        td = self._tensors(data)
        n = len(td)
        model = self.model
        model.train()
        torch.manual_seed(seed)  # dropout; the permutation has its own generator below
        gen = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        params = dict(model.named_parameters())
        anchored = (
            [(params[name], ref.detach()) for name, ref in anchor.items() if name in params]
            if anchor is not None and mu > 0
            else []
        )
        shrunk = [(params[n], lam) for n, lam in (shrink or {}).items() if lam > 0]
        start = time.perf_counter()
        total_loss, steps, seen = 0.0, 0, 0
        bar = tqdm(
            total=epochs * n,
            desc=desc,
            unit="row",
            unit_scale=True,
            disable=not progress,
            leave=False,
        )
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for lo in range(0, n, cfg.batch_size):
                idx = perm[lo : lo + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm cannot normalise a single row
                    continue
                logits = model(td.categorical[idx], td.numerical[idx])
                task_loss = F.binary_cross_entropy_with_logits(logits, td.labels[idx].float())
                loss = task_loss
                if anchored:
                    prox = sum(((p - ref) ** 2).sum() for p, ref in anchored)
                    loss = loss + 0.5 * mu * prox
                if shrunk:
                    loss = loss + 0.5 * sum(lam * (p**2).sum() for p, lam in shrunk)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(task_loss.detach()) * len(idx)
                steps += 1
                seen += len(idx)
                bar.update(len(idx))
        bar.close()
        return FitResult(
            num_samples=n,
            steps=steps,
            loss=total_loss / max(seen, 1),
            seconds=time.perf_counter() - start,
        )

    @torch.inference_mode()
    def predict(self, data: ScenarioData) -> np.ndarray:
        """Probabilities (n, T) in task order."""
        td = self._tensors(data)
        self.model.eval()
        out = []
        for lo in range(0, len(td), self.config.eval_batch_size):
            sl = slice(lo, lo + self.config.eval_batch_size)
            out.append(torch.sigmoid(self.model(td.categorical[sl], td.numerical[sl])))
        if not out:
            return np.zeros((0, len(self.model.tasks)), dtype=np.float32)
        return torch.cat(out).numpy()

    def evaluate(self, data: ScenarioData) -> dict[str, TaskMetrics]:
        return evaluate_predictions(data.labels, self.predict(data), self.model.tasks)
