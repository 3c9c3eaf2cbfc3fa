"""The CUDA paths (issue #17): marked ``gpu`` and skipped where torch sees no CUDA device.

Run them on a GPU machine with ``pytest -m gpu tests/unit/test_cuda.py`` (benchmarks/
gpu_check.sh does, then the GPU benchmarks). They check GPU = CPU on a small model (float32:
matmuls are not TF32 by default, so the results agree to float32 rounding), the fused Adam
kernel on CUDA tensors, the pinned-batch feeder, and the device-neutral boundaries: what a
CUDA client sends, saves and publishes is CPU float32, a CUDA and a CPU client federate
together, and a model trained on the GPU is served by a CPU gateway (and the reverse).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gateway.engine import CompiledMMoE, compile_model, random_batch
from msmtrec.codec import encode
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_method
from msmtrec.federation.strategy import Strategy
from msmtrec.model import build_model, preset
from msmtrec.registry import ModelRegistry
from msmtrec.training.trainer import (
    DeviceBatches,
    FusedAdam,
    TensorData,
    TrainConfig,
    Trainer,
    make_optimizer,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
TRAIN = TrainConfig(batch_size=256)
# GPU vs CPU after training: float32 summation order differs between the kernels, and Adam's
# first steps are nearly sign(g), so a weight whose gradient is a cancellation may move the
# other way: nearly every weight must agree to TRAIN_ATOL, every prediction to PRED_ATOL
TRAIN_ATOL = 2e-4
TRAIN_AGREE = 0.999
PRED_ATOL = 1e-3
# GPU vs CPU for one forward of the same weights (probabilities)
PROB_ATOL = 1e-5


def _no_dropout():
    return preset("small", dropout=0.0)


def _to(tensors, device):
    return {n: t.to(device) for n, t in tensors.items()}


def _assert_states_close(got, want, where=""):
    """Every tensor present; nearly all of their elements within TRAIN_ATOL."""
    assert set(got) == set(want)
    floats = [n for n in want if want[n].is_floating_point()]
    diffs = torch.cat([(got[n].cpu() - want[n].cpu()).abs().flatten() for n in floats])
    share = (diffs <= TRAIN_ATOL).float().mean().item()
    assert share >= TRAIN_AGREE, f"{where}: {share:.5f} of the weights agree to {TRAIN_ATOL}"
    for n in want:
        if not want[n].is_floating_point():
            assert torch.equal(got[n].cpu(), want[n].cpu()), (where, n)


def test_fused_adam_on_cuda_matches_torch_fused_adam():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(50, 7, device=CUDA)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = make_optimizer(ps, lr=1e-2, weight_decay=1e-3)
    theirs = torch.optim.Adam(ref, lr=1e-2, weight_decay=1e-3, fused=True)
    assert isinstance(ours, FusedAdam)
    for step in range(5):
        grads = [torch.randn_like(p) * (step + 1) for p in ps]
        for p, q, g in zip(ps, ref, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, ref, strict=True):
        assert torch.equal(p, q)
    assert all(st[2].device.type == "cuda" for st in ours.state.values())


def test_pinned_batches_are_the_rows_asked_for(small_splits):
    td = TensorData(small_splits["S0"].train)
    feed = DeviceBatches(td, CUDA, 300)
    assert all(b.is_pinned() for slot in feed.buffers for b in slot)
    perm = torch.randperm(len(td), generator=torch.Generator().manual_seed(0))
    for lo in range(0, 1500, 300):  # more batches than buffers: the slots are reused
        idx = perm[lo : lo + 300]
        cat, num, lab = feed.gather(idx)
        assert cat.device.type == "cuda"
        assert torch.equal(cat.cpu(), td.categorical[idx])
        assert torch.equal(num.cpu(), td.numerical[idx])
        assert torch.equal(lab.cpu(), td.labels[idx])
    cat, num, lab = feed.slice(10, 250)
    assert torch.equal(num.cpu(), td.numerical[10:250])


def test_gpu_training_equals_cpu_training_on_a_small_model(small_splits):
    data = small_splits["S0"]
    cpu_model = build_model(data.schema, _no_dropout(), seed=1)
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    cpu, gpu = Trainer(cpu_model, TRAIN), Trainer(gpu_model, TRAIN)
    # the proximal term and the shrinkage too (folded into the fused Adam's weight decay)
    anchor = {n: t.detach().clone() for n, t in cpu_model.named_parameters() if "experts" in n}
    shrink = {n: 0.01 for n in anchor if "weight_t" in n}
    fit_cpu = cpu.fit(data.train, seed=5, anchor=anchor, mu=0.01, shrink=shrink)
    fit_gpu = gpu.fit(data.train, seed=5, anchor=_to(anchor, CUDA), mu=0.01, shrink=shrink)
    assert fit_cpu.steps == fit_gpu.steps
    assert abs(fit_cpu.loss - fit_gpu.loss) < 1e-4
    _assert_states_close(gpu_model.state_dict(), cpu_model.state_dict(), "one epoch")
    p_cpu, p_gpu = cpu.predict(data.test), gpu.predict(data.test)
    assert p_gpu.dtype == np.float32
    assert np.abs(p_cpu - p_gpu).max() < PRED_ATOL


def test_gpu_evaluation_equals_cpu_evaluation_in_batches(small_splits):
    data = small_splits["S1"]
    model = build_model(data.schema, preset("small"), seed=2).eval()
    cfg = TrainConfig(eval_batch_size=137)  # several batches, a ragged last one
    want = Trainer(model, cfg).predict(data.valid)
    got = Trainer(copy.deepcopy(model).to(CUDA), cfg).predict(data.valid)
    assert np.abs(want - got).max() < PROB_ATOL


def test_a_cuda_client_hands_out_cpu_float32_and_federates_with_a_cpu_client(small_splits):
    """Two scenarios, one client on the GPU (bf16) and one on the CPU, one Strategy: the
    round runs, what crosses is CPU float32, and the result is close to an all-CPU round."""
    fed = resolve_method("pfmsmtrec")

    def federation(devices: dict[str, tuple[str, str]]) -> dict[str, dict]:
        clients = {
            s: ClientRuntime(
                s, small_splits[s], _no_dropout(), fed, TRAIN, seed=0, device=d, precision=p
            )
            for s, (d, p) in devices.items()
        }
        first = next(iter(clients.values()))
        strategy = Strategy(fed, first.full_state())
        for s, c in clients.items():
            c.receive(strategy.payload(s), completed_rounds=0)
        updates = []
        for c in clients.values():
            update, _ = c.train_round(1)
            for t in update.params.values():
                assert t.device.type == "cpu" and t.dtype == torch.float32
            assert {s.dtype for s in encode(update.params, c.sent_names).specs} == {"float32"}
            updates.append(update)
        for s, payload in strategy.aggregate(updates).items():
            clients[s].receive(payload, completed_rounds=1)
        full = {s: c.full_state() for s, c in clients.items()}
        for state in full.values():
            assert all(t.device.type == "cpu" for t in state.values())
        return full

    mixed = federation({"S0": ("cuda", "fp32"), "S1": ("cpu", "fp32")})
    on_cpu = federation({"S0": ("cpu", "fp32"), "S1": ("cpu", "fp32")})
    for s in mixed:
        _assert_states_close(mixed[s], on_cpu[s], s)
    federation({"S0": ("cuda", "bf16"), "S1": ("cpu", "fp32")})  # runs, sends float32


def test_trained_on_gpu_served_on_cpu_and_the_reverse(small_splits, tmp_path):
    data = small_splits["S0"]
    fed = resolve_method("fedavg")
    registry = ModelRegistry(tmp_path / "registry")
    gpu = ClientRuntime("S0", data, preset("small"), fed, TRAIN, seed=0, device="cuda")
    gpu.receive(gpu.shared_state(), completed_rounds=0)
    gpu.train_round(1)
    version = registry.publish("S0", gpu, round=1)
    loaded = registry.load("S0", version)
    assert all(t.device.type == "cpu" for t in loaded.model.state_dict().values())
    cat, num = random_batch(loaded.model, 500, seed=3)
    with torch.inference_mode():
        served_cpu = compile_model(loaded.model)(cat, num)
        on_gpu = torch.sigmoid(gpu.model.eval()(cat.to(CUDA), num.to(CUDA))).cpu()
    assert (served_cpu - on_gpu).abs().max().item() < PROB_ATOL
    # the reverse: a CPU-trained model served by the engine on the GPU
    cpu = ClientRuntime("S0", data, preset("small"), fed, TRAIN, seed=0, device="cpu")
    cpu.receive(cpu.shared_state(), completed_rounds=0)
    cpu.train_round(1)
    version = registry.publish("S0", cpu, round=2)
    model = registry.load("S0", version).model
    engine = compile_model(model, device="cuda")
    assert isinstance(engine, CompiledMMoE) and engine.device.type == "cuda"
    with torch.inference_mode():
        want = torch.sigmoid(cpu.model.eval()(cat, num))
        got = engine(cat, num)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    assert (got - want).abs().max().item() < PROB_ATOL


def test_eager_engine_on_cuda():
    model = build_model(ALIEXPRESS, preset("small"), seed=4)
    engine = compile_model(model.eval(), kind="eager", device="cuda")
    cat, num = random_batch(model, 32, seed=1)
    with torch.inference_mode():
        got = engine(cat, num)
        want = torch.sigmoid(model(cat, num))
    assert got.device.type == "cpu"
    assert (got - want).abs().max().item() < PROB_ATOL


def test_bf16_on_cuda_trains_with_float32_master_weights(small_splits):
    data = small_splits["S2"]
    model = build_model(data.schema, preset("small"), seed=0).to(CUDA)
    fit = Trainer(model, TRAIN, precision="bf16").fit(data.train, seed=1)
    assert np.isfinite(fit.loss)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())


def test_dp_sgd_on_cuda_equals_dp_sgd_on_the_cpu(small_splits):
    """A private round on the GPU: the same Poisson batches and noise (the secret generator is
    a CPU one either way), so the result is the CPU round's up to float32 summation order;
    the accountant counts the same steps and ε."""
    from msmtrec.training.config import PrivacyConfig

    fed = resolve_method("pfmsmtrec")
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=11)
    out = {}
    for device in ("cpu", "cuda"):
        rt = ClientRuntime(
            "S0", small_splits["S0"], _no_dropout(), fed, TRAIN, seed=0,
            privacy=privacy, planned_rounds=1, device=device,
        )  # fmt: skip
        rt.receive(rt.shared_state(), completed_rounds=0)
        update, fit = rt.train_round(1)
        for t in update.params.values():
            assert t.device.type == "cpu" and t.dtype == torch.float32
        out[device] = (fit, rt.full_state(), rt.privacy_summary())
    (fit_c, state_c, sum_c), (fit_g, state_g, sum_g) = out["cpu"], out["cuda"]
    assert fit_c.steps == fit_g.steps > 0
    assert abs(fit_c.loss - fit_g.loss) < 1e-4
    assert sum_c["steps"] == sum_g["steps"] and sum_c["epsilon"] == sum_g["epsilon"]
    _assert_states_close(state_g, state_c, "private round")
