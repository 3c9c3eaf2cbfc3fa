"""A scenario client trained by several processes (torch.distributed, DDP on gloo over
127.0.0.1) acting as one federated client (docs/DEPLOYMENT.md, "A client as a multi-replica
job").

Service: a real aggregator, one client as a 2-replica torchrun job and one plain client.

Core: two spawned replicas with 64 rows each per step against one process with batch 128.

* One step's gradients (float32, the federation's dtype) equal the whole batch's: DDP's
  average of the replicas' scaled shard losses, with BatchNorm statistics over both shards.
* A whole round (2 epochs, 58 steps, uneven last batch 13 + 12) for the default method and
  for methods with models of their own (Ditto's personal model, FedRep's frozen phases),
  run in float64: the replicas end bit-identical, and equal to the single process's round
  up to reduction order. Float64 because float32 training here is chaotic in the last bits:
  the same single-process round with 2 torch threads instead of 1 already differs by 0.15
  in some parameter (a Linear bias in front of BatchNorm has an exact gradient of 0, and
  Adam turns its rounding residue into steps of up to lr); in float64 that residue is far
  below Adam's ε and the comparison is tight.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from helpers.distributed import ROWS, replica, runtime, step_gradients, train_one_round
from helpers.federation import Federation
from helpers.processes import ManagedProcess, free_port, get_json
from safetensors.torch import load_file

START = 180  # seconds: torchrun and three client processes on a busy 2-core machine

METHODS = ["pfmsmtrec", "ditto", "fedrep"]
BATCH = 128
TRAIN_ROWS = ROWS - ROWS // 10  # 3609 after the 10 % validation tail
# float32 gradients of one step: the same sums in another order (two shard sums, DDP's
# bucketed average, BatchNorm statistics as sums of two halves): ~1e-7 relative
GRAD_ATOL = 1e-6
# float64 round: measured ≤ 1e-7 on every tensor (docs/DEPLOYMENT.md)
ROUND_ATOL = 1e-6
# ... except pfmsmtrec's scenario-template biases in front of the experts' BatchNorm (exact
# gradient 0, only the template shrink λθ pulls them) and the running means that absorb
# them: Adam moves them on rounding residue even in float64. The single process itself with
# 2 threads instead of 1 moves them by 1.8e-4 (bias_s) and 2.3e-5 (running_mean).
NOISE = re.compile(r"experts\.(layers\.\d+\.bias_s|norms\.\d+\.running_mean)$")
NOISE_ATOL = 1e-3


def diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |a − b| of every floating tensor; integer tensors must be equal."""
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    out = {}
    for name, t in a.items():
        if t.is_floating_point():
            out[name] = float((t.double() - b[name].double()).abs().max())
        else:
            assert torch.equal(t, b[name]), name
    return out


def test_two_replicas_train_what_one_process_trains(tmp_path):
    torch.set_num_threads(1)
    port = free_port()
    mp.spawn(replica, args=(2, port, str(tmp_path), METHODS, BATCH, True), nprocs=2, join=True)

    single = step_gradients(runtime(METHODS[0], BATCH, None), BATCH, None)
    for r in (0, 1):
        grads = diffs(load_file(str(tmp_path / f"grads-rank{r}.safetensors")), single)
        print(f"one step, rank {r}: max |grad diff| = {max(grads.values()):.3g}")
        assert max(grads.values()) <= GRAD_ATOL, sorted(grads.items(), key=lambda kv: -kv[1])[:3]
    assert max(float(g.abs().max()) for g in single.values()) > 1e-2  # a real gradient

    for method in METHODS:
        train_one_round(runtime(method, BATCH, None, float64=True), tmp_path, f"{method}-single")
        one = load_file(str(tmp_path / f"{method}-single.safetensors"))
        ranks = [load_file(str(tmp_path / f"{method}-rank{r}.safetensors")) for r in (0, 1)]
        # same averaged gradients, same Adam steps: the replicas' states are bit-identical
        assert max(diffs(ranks[0], ranks[1]).values()) == 0.0, method
        d = diffs(ranks[0], one)
        tight = {n: v for n, v in d.items() if not NOISE.search(n)}
        noisy = {n: v for n, v in d.items() if NOISE.search(n)}
        print(
            f"{method} round (float64): max |distributed - single| = {max(tight.values()):.3g}"
            + (f"; template biases/running means {max(noisy.values()):.3g}" if noisy else "")
        )
        assert max(tight.values()) <= ROUND_ATOL, (method, max(tight.items(), key=lambda kv: kv[1]))
        assert max(noisy.values(), default=0.0) <= NOISE_ATOL, method
        # and the round trained: the parameters moved far more than the tolerance
        fresh = runtime(method, BATCH, None, float64=True).model.state_dict()
        moved = [(one[n] - t).abs().max() for n, t in fresh.items() if t.is_floating_point()]
        assert max(moved) > 1e-2
        rank0, alone = (
            json.loads((tmp_path / f"{method}-{t}.json").read_text()) for t in ("rank0", "single")
        )
        # 2 epochs of ⌈3609 / 128⌉ steps (FedRep: + 1 head epoch)
        epochs = 3 if method == "fedrep" else 2
        assert rank0["steps"] == alone["steps"] == epochs * -(-TRAIN_ROWS // BATCH)
        assert rank0["num_samples"] == alone["num_samples"] == TRAIN_ROWS
        # rank 0 reports the whole scenario's loss, not its shard's
        assert abs(rank0["loss"] - alone["loss"]) <= 1e-6 * alone["loss"], (rank0, alone)


class TorchrunClient(ManagedProcess):
    """``torchrun --nproc_per_node 2 -m msmtrec_app.cli client … --distributed`` over
    127.0.0.1: one scenario client as two replicas (its output in one log)."""

    def start(self, env: dict | None = None, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "msmtrec_app.cli", *self.args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=self.own_session,
            )


def test_a_torchrun_client_is_one_client_of_a_real_federation(tmp_path, processes):
    """A real aggregator, scenario S0 as a 2-replica torchrun job and S1 as a plain client:
    2 rounds complete, the aggregator saw exactly two clients, S0 reported its whole
    scenario (not a shard), and both replicas trained and ended with rank 0's exit code."""
    fed = Federation.create(tmp_path, scenarios=("S0", "S1"))
    processes.launch("aggregator", fed.aggregator_args(rounds=2, exit_when_done=False))
    replicas = TorchrunClient(
        "S0-torchrun",
        fed.client_args("S0", distributed=True, replica_timeout_seconds=60),
        processes.log_dir,
    )
    processes.procs.append(replicas)
    plain = processes.launch("S1", fed.client_args("S1"))
    assert replicas.wait(START) == 0, processes.logs()
    assert plain.wait(START) == 0, processes.logs()

    rounds = get_json(fed.url("/v1/rounds"))
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert sorted(r["participants"]) == ["S0", "S1"]
        assert r["closed_by"] == "all_submitted"
        assert r["clients"]["S0"]["num_samples"] == 1800  # the whole scenario, not a shard
        assert r["clients"]["S0"]["metrics"]["train_loss"] > 0
    clients = get_json(fed.url("/v1/clients"))
    assert len(clients) == 2, clients
    assert all(c["final_fetched"] and c["rounds"] == [1, 2] for c in clients)
    log = replicas.tail(400)
    assert "training as 2 replicas" in log
    for n in (1, 2):
        assert f"rank 1 trained round {n}" in log
    assert "rank 1: rank 0 ended with exit code 0" in log
