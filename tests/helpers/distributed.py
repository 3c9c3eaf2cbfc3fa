"""Replica workers for tests/integration/test_distributed_client.py: one scenario client's
round trained by a torch.multiprocessing.spawn'ed group (gloo over 127.0.0.1), or by one
process, on the same data and settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from conftest import make_splits
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.federation.client import ClientRuntime
from msmtrec.spec import FederationSpec
from msmtrec.training.config import TrainConfig
from msmtrec.training.distributed import (
    DistributedTrainer,
    replica_loss,
    shard,
    synced_batchnorm,
)
from msmtrec.training.process_group import ReplicaGroup, close_replicas, init_replicas

ROWS = 4010  # 3609 training rows: the last batch of 128 has 25 rows, split 13 + 12


def spec(method: str, batch_size: int) -> FederationSpec:
    """Dropout 0: with dropout each replica draws its own masks, so only the distribution
    would match; everything else is the federation's default small preset."""
    return FederationSpec(
        method=method,
        rounds=1,
        model_overrides={"dropout": 0.0},
        train=TrainConfig(batch_size=batch_size, local_epochs=2),
    )


def runtime(
    method: str, batch_size: int, group: ReplicaGroup | None, float64: bool = False
) -> ClientRuntime:
    """Scenario S0's client; ``float64``: its models and numerical features in double
    precision (the trainer runs any floating dtype; the federation itself is float32)."""
    s = spec(method, batch_size)
    splits = make_splits(num_scenarios=1, rows=ROWS)["S0"]
    if float64:
        splits = ScenarioSplits(
            splits.name, *(wide(d) for d in (splits.train, splits.valid, splits.test)),
            splits.schema,
        )  # fmt: skip
    factory = DistributedTrainer.factory(group) if group is not None else None
    rt = ClientRuntime(
        "S0", splits, s.model_config(), s.federation(), s.train, s.seed, trainer_factory=factory
    )
    if float64:
        rt.model.double()
        personal = getattr(rt.hooks, "personal", None)  # Ditto's own model
        if personal is not None:
            personal.double()
    return rt


def wide(data: ScenarioData) -> ScenarioData:
    return ScenarioData(data.categorical, data.numerical.astype(np.float64), data.labels)


def state_of(rt: ClientRuntime) -> dict[str, torch.Tensor]:
    """The client's full state in the model's own dtype (method extras included)."""
    state = {**rt.model.state_dict(), **rt.hooks.extra_state(rt)}
    return {n: t.detach().clone().contiguous() for n, t in state.items()}


def train_one_round(rt: ClientRuntime, out: Path, tag: str) -> None:
    """Receive the initial shared state (anchoring the proximal term), train round 1, save
    the client's full state (method extras included) and the round's figures."""
    rt.receive(rt.shared_state(), completed_rounds=0)
    dtype = next(rt.model.parameters()).dtype
    rt.anchor = {n: t.to(dtype) for n, t in (rt.anchor or {}).items()}
    update, fit = rt.train_round(1)
    save_file(state_of(rt), str(out / f"{tag}.safetensors"))
    figures = {"loss": fit.loss, "steps": fit.steps, "num_samples": update.num_samples}
    (out / f"{tag}.json").write_text(json.dumps(figures))


def step_gradients(rt: ClientRuntime, batch: int, group: ReplicaGroup | None) -> dict:
    """The gradients of one step on the first ``batch`` training rows: the whole batch in
    one process, or this replica's shard through DDP as DistributedTrainer.fit computes it
    (synced BatchNorm, :func:`replica_loss`)."""
    model = rt.model
    model.train()
    td = rt.trainer._tensors(rt.splits.train)
    rows = torch.arange(batch)
    if group is None:
        logits = model(td.categorical[rows], td.numerical[rows])
        F.binary_cross_entropy_with_logits(logits, td.labels[rows].float()).backward()
    else:
        idx = shard(rows, group.rank, group.world_size)
        with synced_batchnorm(model):
            ddp = DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)
            logits = ddp(td.categorical[idx], td.numerical[idx])
            replica_loss(logits, td.labels[idx], batch, group.world_size).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def replica(
    rank: int, world: int, port: int, out: str, methods: list[str], batch: int, float64: bool
) -> None:
    """torch.multiprocessing.spawn target: what torchrun would set, then one step's
    gradients (float32) and one round per method with the global batch ``batch`` split over
    ``world`` replicas."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    group = init_replicas(120)
    try:
        grads = step_gradients(runtime(methods[0], batch, group), batch, group)
        save_file(grads, str(Path(out) / f"grads-rank{rank}.safetensors"))
        for method in methods:
            rt = runtime(method, batch, group, float64)
            train_one_round(rt, Path(out), f"{method}-rank{rank}")
    finally:
        close_replicas()
