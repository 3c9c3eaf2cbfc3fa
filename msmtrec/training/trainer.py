"""Local training and evaluation of one scenario's model.

Batches are taken by indexing whole tensors with a seeded permutation: no DataLoader, no
per-row Python work. The optimizer (Adam) is created fresh for every ``fit`` call [chosen]:
after the server replaces the shared parameters, the old moment estimates no longer describe
them, and a stateless round keeps a restarted client identical to one that never stopped.

Speed (benchmarks/training.py, issue #6): Adam runs as torch's fused CPU kernel, one call per
parameter group (:class:`FusedAdam`), which on the ``paper`` preset's 40 M parameters is
~10× cheaper than ``torch.optim.Adam``'s default per-tensor path and skips its first-use
import of ``torch._dynamo`` (~1.5-2.5 s per process). The quadratic penalties (proximal term
and template shrinkage) are not added to the loss: their gradients ``μ(θ − θ_start) + λθ`` are
linear, so they are folded into each group's L2 weight decay (``wd + μ + λ``) with ``−μ·θ_start``
added to the gradient — the same objective and gradient, without two extra autograd passes
over tens of millions of weights per step.

Devices (issue #17): the trainer runs wherever its model's parameters are. On CUDA each batch
is gathered on the CPU into one of two pinned buffers and copied asynchronously
(:class:`DeviceBatches`), the loss is summed on the device (no host sync per step), and
evaluation runs in device batches. ``precision="bf16"`` runs forward and backward under
autocast; the parameters, the optimizer state and the loss stay float32. On the CPU in float32
every step is the same computation as before, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.stream import ParquetStream
from msmtrec.device import autocast, check_precision, model_device
from msmtrec.model.mmoe import MultiTaskMMoE
from msmtrec.training.config import TrainConfig
from msmtrec.training.sparse import SparseRowAdam

if TYPE_CHECKING:
    from msmtrec.training.privacy import PrivateTraining
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


class DeviceBatches:
    """Batches for a CUDA model: rows gathered on the CPU into pinned buffers and copied to the
    device with ``non_blocking=True``, so the copy of one batch overlaps the compute of the
    one before. Two buffers alternate; before a buffer is refilled, the event recorded after
    its last copy is waited on (the copy must have read it), which is the only host wait."""

    SLOTS = 2

    def __init__(self, td: TensorData, device: torch.device, rows: int) -> None:
        self.td, self.device = td, device
        rows = max(1, min(rows, len(td)))
        self.buffers = [
            tuple(
                torch.empty((rows, *t.shape[1:]), dtype=t.dtype).pin_memory()
                for t in (td.categorical, td.numerical, td.labels)
            )
            for _ in range(self.SLOTS)
        ]
        self.events: list[torch.cuda.Event | None] = [None] * self.SLOTS
        self.turn = 0

    def _stage(
        self, fill: Callable[[torch.Tensor, torch.Tensor, int], object], m: int
    ) -> tuple[torch.Tensor, ...]:
        slot = self.turn
        self.turn = (self.turn + 1) % self.SLOTS
        event = self.events[slot]
        if event is not None:
            event.synchronize()
        sources = (self.td.categorical, self.td.numerical, self.td.labels)
        out = []
        for buf, src in zip(self.buffers[slot], sources, strict=True):
            view = buf[:m]
            fill(src, view, m)
            out.append(view.to(self.device, non_blocking=True))
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return tuple(out)

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rows ``idx`` (a CPU index tensor) as device tensors (categorical, numerical, labels)."""
        return self._stage(lambda src, view, m: torch.index_select(src, 0, idx, out=view), len(idx))

    def slice(self, lo: int, hi: int) -> tuple[torch.Tensor, ...]:
        """Rows ``lo:hi`` as device tensors."""
        return self._stage(lambda src, view, m: view.copy_(src[lo:hi]), hi - lo)


class FusedAdam:
    """``torch.optim.Adam`` (L2 weight decay, no amsgrad) as torch's fused kernel,
    ``torch._fused_adam_``, called once per parameter group with that group's weight decay.
    The same kernel runs on CPU and CUDA tensors; the step counters live on the parameters'
    device, as torch's fused Adam keeps them.

    Bit-identical to ``torch.optim.Adam(..., fused=True)`` (tests/unit/test_trainer.py), but built
    without ``torch.optim.Optimizer``: its constructor imports ``torch._dynamo`` on first use,
    which costs seconds in every process that trains. Parameters without a gradient are
    skipped, as torch's optimizers do.
    """

    def __init__(
        self,
        groups: Sequence[tuple[Sequence[torch.nn.Parameter], float]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.groups = [(list(params), float(wd)) for params, wd in groups if params]
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.state: dict[torch.nn.Parameter, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for params, _ in self.groups:
            for p in params:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for params, wd in self.groups:
            ps, grads, avgs, sqs, steps = [], [], [], [], []
            for p in params:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = (
                        torch.zeros_like(p, memory_format=torch.preserve_format),
                        torch.zeros_like(p, memory_format=torch.preserve_format),
                        torch.zeros((), dtype=torch.float32, device=p.device),
                    )
                ps.append(p)
                grads.append(p.grad)
                avgs.append(st[0])
                sqs.append(st[1])
                steps.append(st[2])
            if not ps:
                continue
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                ps, grads, avgs, sqs, [], steps,
                lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=wd, eps=self.eps,
                amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
            )  # fmt: skip


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | Sequence[tuple[Sequence[torch.nn.Parameter], float]],
    *,
    lr: float,
    weight_decay: float,
) -> FusedAdam | torch.optim.Adam:
    """Adam over ``params`` (plain parameters, or ``(parameters, weight_decay)`` groups); the
    fused kernel when this torch has it (float32 parameters on the CPU or on CUDA, all on
    one device), else ``torch.optim.Adam``."""
    items = list(params)
    groups = (
        [(list(g), float(wd)) for g, wd in items]
        if items and isinstance(items[0], tuple)
        else [(items, float(weight_decay))]
    )
    devices = {p.device for g, _ in groups for p in g}
    fused_ok = (
        hasattr(torch, "_fused_adam_")
        and len(devices) <= 1
        and all(d.type in ("cpu", "cuda") for d in devices)
        and all(p.dtype == torch.float32 for g, _ in groups for p in g)
    )
    if fused_ok:
        return FusedAdam(groups, lr=lr)
    return torch.optim.Adam([{"params": g, "weight_decay": wd} for g, wd in groups], lr=lr)


def penalty_groups(
    params: Mapping[str, torch.nn.Parameter],
    weight_decay: float,
    anchor: Mapping[str, torch.Tensor] | None,
    mu: float,
    shrink: Mapping[str, float] | None,
) -> tuple[list[tuple[list[torch.nn.Parameter], float]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Parameter groups whose L2 weight decay folds in the quadratic penalties, and the
    (parameter, anchor) pairs whose gradient gets ``−μ·anchor`` each step.

    ∇[(μ/2)‖θ − θ₀‖² + (λ/2)‖θ‖²] = (μ + λ)θ − μθ₀: with Adam's L2 decay ``wd`` the group's
    decay is ``wd + μ·[anchored] + λ`` and the constant ``−μθ₀`` is added to the gradient."""
    anchored = {n for n in (anchor or {}) if n in params} if mu > 0 else set()
    lams = {n: float(lam) for n, lam in (shrink or {}).items() if lam > 0 and n in params}
    by_decay: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in params.items():
        decay = weight_decay + (mu if name in anchored else 0.0) + lams.get(name, 0.0)
        by_decay.setdefault(decay, []).append(p)
    refs = [(params[n], anchor[n].detach()) for n in params if n in anchored]  # type: ignore[index]
    return [(g, wd) for wd, g in by_decay.items()], refs


def _split_sparse(
    model: torch.nn.Module, params: dict[str, torch.nn.Parameter], lr: float
) -> tuple[dict[str, torch.nn.Parameter], SparseRowAdam | None]:
    """The dense parameters (for Adam and the penalties) and a row-wise Adam over the
    model's sparse embedding tables, if it has any (the AliExpress layout has none, so its
    steps are unchanged)."""
    names = getattr(model, "sparse_parameter_names", frozenset())
    sparse = [p for n, p in params.items() if n in names]
    if not sparse:
        return params, None
    dense = {n: p for n, p in params.items() if n not in names}
    return dense, SparseRowAdam(sparse, lr=lr)


class Trainer:
    """Fits and evaluates one model; the regularizer (μ/2)‖θ_shared − θ_start‖² anchors the
    tensors that leave the client to where the round started (PF-MSMTrec §6, FedProx), and
    ``shrink`` {name: λ} adds (λ/2)‖θ‖² on chosen tensors (the template's specific parts).

    It trains where ``model``'s parameters are (move the model, not the trainer);
    ``precision`` is ``fp32`` or ``bf16`` (autocast, float32 master weights). ``privacy``
    makes every fit DP-SGD (on the model's device too; fp32 only)."""

    def __init__(
        self,
        model: MultiTaskMMoE,
        config: TrainConfig | None = None,
        privacy: PrivateTraining | None = None,
        *,
        precision: str = "fp32",
    ) -> None:
        self.model = model
        self.config = config or TrainConfig()
        self.precision = check_precision(precision)
        # DP-SGD for every fit of this model (Poisson batches, per-sample clipping, noise,
        # BatchNorm with fixed statistics; msmtrec.training.privacy); None: plain training
        self.privacy = privacy

    def for_model(self, model: MultiTaskMMoE) -> Trainer:
        """A trainer of another model with this one's settings, the model moved to this
        trainer's device (a method's personal or fine-tuned copy). Not its privacy: a copy
        that never leaves the client trains without DP-SGD."""
        return Trainer(model.to(model_device(self.model)), self.config, precision=self.precision)

    @staticmethod
    def _tensors(data: ScenarioData) -> TensorData:
        """Torch views of a split, made once and kept with the split itself."""
        cached = data.__dict__.get("_tensor_views")
        if cached is None:
            cached = data.__dict__["_tensor_views"] = TensorData(data)
        return cached

    def fit(
        self,
        data: ScenarioData | ParquetStream,
        *,
        seed: int,
        epochs: int | None = None,
        anchor: Mapping[str, torch.Tensor] | None = None,
        mu: float = 0.0,
        shrink: Mapping[str, float] | None = None,
        trainable: Collection[str] | None = None,
        progress: bool = False,
        desc: str = "train",
    ) -> FitResult:
        """``epochs`` over ``data`` (default ``local_epochs``); a ``ParquetStream`` is read
        out of core, in its own shuffled batches (seeded by ``seed`` and the epoch).
        ``trainable``: names of the only parameters that move (the others are frozen for
        this call, e.g. FedRep's alternating head and body steps); None: all of them."""
        named = dict(self.model.named_parameters())
        if trainable is None:
            return self._fit(data, named, seed, epochs, anchor, mu, shrink, progress, desc)
        unknown = sorted(set(trainable) - set(named))
        if not trainable:
            raise ValueError("trainable is empty: nothing would be trained")
        if unknown:
            raise ValueError(f"trainable names no parameter of the model: {unknown[:5]}")
        frozen = [p for n, p in named.items() if n not in trainable and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            params = {n: p for n, p in named.items() if n in trainable}
            return self._fit(data, params, seed, epochs, anchor, mu, shrink, progress, desc)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _fit(
        self,
        data: ScenarioData | ParquetStream,
        params: dict[str, torch.nn.Parameter],
        seed: int,
        epochs: int | None,
        anchor: Mapping[str, torch.Tensor] | None,
        mu: float,
        shrink: Mapping[str, float] | None,
        progress: bool,
        desc: str,
    ) -> FitResult:
        cfg = self.config
        epochs = cfg.local_epochs if epochs is None else epochs
        stream = data if isinstance(data, ParquetStream) else None
        td = None if isinstance(data, ParquetStream) else self._tensors(data)
        n = len(data)
        model = self.model
        device = model_device(model)
        model.train()
        if self.privacy is not None:
            if td is None:
                raise ValueError("DP-SGD samples batches from every row: it needs in-memory data")
            return self._fit_private(td, params, seed, epochs, anchor, mu, shrink, progress, desc)
        cuda = td is not None and device.type == "cuda"
        feed = DeviceBatches(td, device, cfg.batch_size) if cuda else None
        torch.manual_seed(seed)  # dropout; the permutation has its own generator below
        gen = torch.Generator().manual_seed(seed)
        params, sparse_opt = _split_sparse(model, params, cfg.lr)
        groups, anchored = penalty_groups(params, cfg.weight_decay, anchor, mu, shrink)
        optimizer = make_optimizer(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        anchored_params = [p for p, _ in anchored]
        anchored_refs = [ref for _, ref in anchored]
        penalized = [p for g, wd in groups if wd != cfg.weight_decay for p in g]
        start = time.perf_counter()
        # float64 on the device: the same sum as adding Python floats, without a host sync
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        steps, seen = 0, 0
        bar = tqdm(
            total=epochs * n,
            desc=desc,
            unit="row",
            unit_scale=True,
            disable=not progress,
            leave=False,
        )

        def batches(epoch: int) -> Iterable[tuple[torch.Tensor, ...]]:
            if stream is not None:  # out of core: the stream's own shuffled batches
                for b in stream.batches(cfg.batch_size, seed=seed, epoch=epoch):
                    if len(b) >= 2:  # BatchNorm cannot normalise a single row
                        yield tuple(
                            torch.from_numpy(a).to(device, non_blocking=True)
                            for a in (b.categorical, b.numerical, b.labels)
                        )
                return
            assert td is not None
            perm = torch.randperm(n, generator=gen)
            for lo in range(0, n, cfg.batch_size):
                idx = perm[lo : lo + cfg.batch_size]
                if len(idx) < 2:  # BatchNorm cannot normalise a single row
                    continue
                if feed is None:
                    yield td.categorical[idx], td.numerical[idx], td.labels[idx]
                else:
                    yield feed.gather(idx)

        for epoch in range(epochs):
            for cat, num, labels in batches(epoch):
                with autocast(device, self.precision):
                    logits = model(cat, num)
                # the loss in float32 whatever the autocast dtype (a no-op in fp32)
                task_loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
                optimizer.zero_grad(set_to_none=True)
                if sparse_opt is not None:
                    sparse_opt.zero_grad()
                task_loss.backward()
                for p in penalized:  # a penalty alone still moves an unused parameter
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                if anchored:  # the proximal term's constant part; the rest is weight decay
                    torch._foreach_add_([p.grad for p in anchored_params], anchored_refs, alpha=-mu)
                if sparse_opt is not None:  # row-wise: only the batch's rows of its tables
                    sparse_opt.step()
                optimizer.step()
                total_loss += task_loss.detach().double() * len(labels)
                steps += 1
                seen += len(labels)
                bar.update(len(labels))
        bar.close()
        loss = float(total_loss) / max(seen, 1)  # on CUDA: waits for the last step
        return FitResult(num_samples=n, steps=steps, loss=loss, seconds=time.perf_counter() - start)

    def _fit_private(
        self,
        td: TensorData,
        params: dict[str, torch.nn.Parameter],
        seed: int,
        epochs: int,
        anchor: Mapping[str, torch.Tensor] | None,
        mu: float,
        shrink: Mapping[str, float] | None,
        progress: bool,
        desc: str,
    ) -> FitResult:
        """DP-SGD: ``epochs × ⌈n / batch⌉`` steps on Poisson-sampled batches (rate
        batch / n, from the privacy's secret generator), each a clipped and noised gradient
        of the trained tensors; the penalties are data-independent and added afterwards.
        BatchNorm normalises with fixed statistics (a row's output must not depend on the
        other rows of its batch)."""
        from msmtrec.training.privacy import freeze_batchnorm

        privacy = self.privacy
        assert privacy is not None
        if getattr(self.model, "sparse_parameter_names", None):
            raise ValueError(
                "differential privacy (dp_epsilon / dp_noise_multiplier) with sparse embedding "
                f"tables {sorted(self.model.sparse_parameter_names)}: per-sample clipping "
                "needs dense gradients; use tables of at most SPARSE_TABLE_ROWS rows"
            )
        if self.precision != "fp32":
            raise ValueError(
                f"precision {self.precision!r} with differential privacy (dp_epsilon / "
                "dp_noise_multiplier): the per-sample gradient norms are computed in float32 "
                "only; use precision fp32"
            )
        cfg, model, n = self.config, self.model, len(td)
        device = model_device(model)
        freeze_batchnorm(model)
        torch.manual_seed(seed)  # dropout
        groups, anchored = penalty_groups(params, cfg.weight_decay, anchor, mu, shrink)
        optimizer = make_optimizer(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        anchored_params = [p for p, _ in anchored]
        anchored_refs = [ref for _, ref in anchored]
        penalized = [p for g, wd in groups if wd != cfg.weight_decay for p in g]
        start = time.perf_counter()
        total_loss, steps, seen = 0.0, 0, 0
        total_steps = epochs * privacy.steps_per_epoch(n)
        bar = tqdm(total=total_steps, desc=desc, unit="step", disable=not progress, leave=False)
        for _ in range(total_steps):
            idx = privacy.sample(n)  # on the CPU, from the secret generator
            # a Poisson batch has no size bound (no pinned buffers); .to is a no-op on the CPU
            cat, num, labels = (
                t[idx].to(device) for t in (td.categorical, td.numerical, td.labels)
            )
            loss = privacy.step(model, params, cat, num, labels, n)
            for p in penalized:  # as in _fit: a penalty alone still moves an unused tensor
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if anchored:
                torch._foreach_add_([p.grad for p in anchored_params], anchored_refs, alpha=-mu)
            optimizer.step()
            total_loss += loss * len(idx)
            steps += 1
            seen += len(idx)
            bar.update(1)
        bar.close()
        return FitResult(
            num_samples=n,
            steps=steps,
            loss=total_loss / max(seen, 1),
            seconds=time.perf_counter() - start,
        )

    @torch.inference_mode()
    def predict(self, data: ScenarioData) -> np.ndarray:
        """Probabilities (n, T) float32 in task order, computed in batches of
        ``eval_batch_size`` on the model's device (one copy back at the end)."""
        td = self._tensors(data)
        self.model.eval()
        device = model_device(self.model)
        size = self.config.eval_batch_size
        feed = DeviceBatches(td, device, size) if device.type == "cuda" else None
        out = []
        for lo in range(0, len(td), size):
            hi = min(lo + size, len(td))
            if feed is None:
                cat, num = td.categorical[lo:hi], td.numerical[lo:hi]
            else:
                cat, num, _ = feed.slice(lo, hi)
            with autocast(device, self.precision):
                logits = self.model(cat, num)
            out.append(torch.sigmoid(logits.float()))
        if not out:
            return np.zeros((0, len(self.model.tasks)), dtype=np.float32)
        return torch.cat(out).cpu().numpy()

    def evaluate(self, data: ScenarioData) -> dict[str, TaskMetrics]:
        return evaluate_predictions(data.labels, self.predict(data), self.model.tasks)
