"""One scenario's local training spread over the replicas of a torchrun job (DDP on gloo).

The replicas act as one client: every replica holds the same model and the whole scenario,
and each round trains the same way :class:`~msmtrec.training.trainer.Trainer` does, with each
batch split across them. Concretely, for ``W`` replicas and the federation's batch size ``B``:

* **Data shard.** Every replica draws the same permutation (the round's seed) and takes rows
  ``r, r+W, r+2W, …`` of each global batch of ``B`` rows — ``DistributedSampler``'s striding,
  applied per batch — so the ``W`` shards of a step are exactly the batch one process would
  train on, and the scenario's batch size stays the one the federation spec sets.
* **Gradients.** DDP (``DistributedDataParallel``, gloo) averages the replicas' gradients. Each
  replica's loss is its shard's BCE *sum* scaled by ``W / (B·T)``, so the average is the
  gradient of the whole batch's mean BCE even when the last batch does not split evenly.
* **BatchNorm.** A replica's shard alone would normalise with its own statistics;
  :func:`synced_batchnorm` computes every BatchNorm's batch mean and variance over all
  replicas' rows (two differentiable all-reduces, the variance by a second pass around the
  global mean for accuracy), so the forward pass and the running statistics are those of the
  whole batch (``torch.nn.SyncBatchNorm`` runs on GPUs only).
* **Metrics.** The round's loss is summed over replicas and divided by the global row count:
  what rank 0 reports is the whole scenario's number.

So with dropout 0 a round equals the single-process trainer's round on the same data up to
floating-point reduction order (tests/integration/test_distributed_client.py measures it).
With dropout > 0 each replica draws its own masks (seed mixed with the rank): the same
distribution, not the same numbers. The optimizer step runs on every replica with identical
averaged gradients, so their states stay in step without further traffic. DP-SGD (per-sample
clipping and noise) is not distributed: a private client trains in one process.
"""

from __future__ import annotations

import contextlib
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from msmtrec.data.dataset import ScenarioData
from msmtrec.device import autocast, model_device
from msmtrec.model.mmoe import MultiTaskMMoE
from msmtrec.training.config import TrainConfig
from msmtrec.training.process_group import ReplicaGroup
from msmtrec.training.trainer import FitResult, Trainer, make_optimizer, penalty_groups

if TYPE_CHECKING:
    from msmtrec.training.privacy import PrivateTraining

__all__ = ["DistributedTrainer", "replica_loss", "shard", "synced_batchnorm"]


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This replica's rows of a global batch: positions ``rank, rank + W, …`` (may be empty
    when the batch has fewer rows than replicas)."""
    return batch[rank::world_size]


def replica_loss(
    logits: torch.Tensor, labels: torch.Tensor, batch_rows: int, world_size: int
) -> torch.Tensor:
    """This replica's share of a global batch's mean BCE: its rows' BCE *sum* × W / (B·T).
    DDP averages the replicas' gradients (sum / W), which makes it the gradient of the
    whole batch's mean over its ``batch_rows`` rows and T tasks, however the rows split."""
    tasks = logits.shape[1]
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    return bce * (world_size / (batch_rows * tasks))


def dropout_seed(seed: int, rank: int) -> int:
    """The seed of a replica's dropout masks: rank 0 keeps the round's seed (a one-replica
    job trains exactly like the single-process trainer), the others get their own."""
    return seed if rank == 0 else zlib.crc32(f"{seed}/replica/{rank}".encode())


def _sync_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm1d of ``x`` (rows, C) with the statistics of every replica's
    rows; updates the running statistics like ``F.batch_norm`` does."""
    # statistics in float32 at least (autocast hands BatchNorm bf16 activations), as
    # F.batch_norm keeps them; float64 models stay float64
    xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    channels = xs.shape[1]
    count = torch.full((1,), float(xs.shape[0]), dtype=xs.dtype)
    first = dist_nn.all_reduce(torch.cat((xs.sum(0), count)))
    total = first[channels]
    mean = first[:channels] / total
    centred = xs - mean
    var = dist_nn.all_reduce((centred * centred).sum(0)) / total  # biased, as F.batch_norm
    out = centred * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        with torch.no_grad():
            assert bn.num_batches_tracked is not None
            bn.num_batches_tracked.add_(1)
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = float(total)
            bn.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
            bn.running_var.mul_(1 - f).add_(var.detach() * (n / max(n - 1, 1.0)), alpha=f)
    return out


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm of ``model`` normalises over all replicas' rows in training mode while
    the context is open (the modules themselves, their names and state stay as they are;
    evaluation mode is untouched)."""
    patched = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):

            def forward(
                x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm = module
            ) -> torch.Tensor:
                if not bn.training:
                    return type(bn).forward(bn, x)
                if x.dim() != 2:
                    raise ValueError(f"synced BatchNorm expects (rows, channels), got {x.shape}")
                return _sync_batch_norm(bn, x)

            module.forward = forward  # type: ignore[method-assign]
            patched.append(module)
    try:
        with warnings.catch_warnings():
            # the autograd all-reduce has no non-deprecated replacement that is differentiable
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)
            yield
    finally:
        for module in patched:
            del module.forward


class DistributedTrainer(Trainer):
    """A :class:`Trainer` whose ``fit`` is one replica's part of a data-parallel round (see
    the module docstring). ``predict``/``evaluate`` run locally on the whole split."""

    def __init__(
        self,
        model: MultiTaskMMoE,
        config: TrainConfig | None = None,
        privacy: PrivateTraining | None = None,
        *,
        precision: str = "fp32",
        group: ReplicaGroup,
    ) -> None:
        if privacy is not None:
            raise ValueError("differential privacy is not supported for a distributed client")
        super().__init__(model, config, precision=precision)
        self.group = group

    @classmethod
    def factory(
        cls, group: ReplicaGroup
    ) -> Callable[[MultiTaskMMoE, TrainConfig | None, str], Trainer]:
        """What :class:`~msmtrec.federation.client.ClientRuntime` takes as its trainer."""

        def make(model: MultiTaskMMoE, config: TrainConfig | None, precision: str) -> Trainer:
            return cls(model, config, precision=precision, group=group)

        return make

    def for_model(self, model: MultiTaskMMoE) -> Trainer:
        """Another model (a method's personal or fine-tuned copy) trained by all replicas."""
        model = model.to(model_device(self.model))
        return DistributedTrainer(model, self.config, precision=self.precision, group=self.group)

    def _fit(
        self,
        data: ScenarioData,
        params: dict[str, torch.nn.Parameter],
        seed: int,
        epochs: int | None,
        anchor: Mapping[str, torch.Tensor] | None,
        mu: float,
        shrink: Mapping[str, float] | None,
        progress: bool,
        desc: str,
    ) -> FitResult:
        if self.privacy is not None:
            raise ValueError("differential privacy is not supported for a distributed client")
        cfg, group = self.config, self.group
        epochs = cfg.local_epochs if epochs is None else epochs
        model = self.model
        device = model_device(model)
        if device.type != "cpu":
            raise ValueError(f"a distributed client trains on the CPU (gloo), not on {device}")
        td = self._tensors(data)
        n, world, rank = len(td), group.world_size, group.rank
        model.train()
        torch.manual_seed(dropout_seed(seed, rank))
        gen = torch.Generator().manual_seed(seed)  # the same permutation on every replica
        groups, anchored = penalty_groups(params, cfg.weight_decay, anchor, mu, shrink)
        optimizer = make_optimizer(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        anchored_params = [p for p, _ in anchored]
        anchored_refs = [ref for _, ref in anchored]
        penalized = [p for g, wd in groups if wd != cfg.weight_decay for p in g]
        start = time.perf_counter()
        local_loss = torch.zeros((), dtype=torch.float64)  # Σ over my rows of mean-task BCE
        steps, seen = 0, 0
        with synced_batchnorm(model):
            # init_sync off: the replicas' states are made equal before every round
            # (scenario_client.distributed); forward_sync_buffers off: BatchNorm statistics are
            # computed over all replicas, so every buffer is already equal.
            ddp = DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)
            try:
                for _ in range(epochs):
                    perm = torch.randperm(n, generator=gen)
                    for lo in range(0, n, cfg.batch_size):
                        batch = perm[lo : lo + cfg.batch_size]
                        m = len(batch)
                        if m < 2:  # as the single-process trainer: BatchNorm needs 2 rows
                            continue
                        idx = shard(batch, rank, world)
                        cat, num, labels = td.categorical[idx], td.numerical[idx], td.labels[idx]
                        with autocast(device, self.precision):
                            logits = ddp(cat, num)
                        loss = replica_loss(logits, labels, m, world)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        for p in penalized:
                            if p.grad is None:
                                p.grad = torch.zeros_like(p)
                        if anchored:
                            torch._foreach_add_(
                                [p.grad for p in anchored_params], anchored_refs, alpha=-mu
                            )
                        optimizer.step()
                        # back to this replica's Σ of per-row mean task BCE
                        local_loss += loss.detach().double() * (m / world)
                        steps += 1
                        seen += m
            finally:
                del ddp
        total = group.all_reduce_(local_loss.reshape(1).clone(), "the round's loss")
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        group.all_reduce_(elapsed, "the round's time", dist.ReduceOp.MAX)
        return FitResult(
            num_samples=n,
            steps=steps,
            loss=float(total[0]) / max(seen, 1),
            seconds=float(elapsed[0]),
        )
