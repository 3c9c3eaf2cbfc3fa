"""Devices and precision (issue #17) on the CPU: the device flags, bf16 autocast training for
real, and the device-neutral boundaries (wire, local state, registry: CPU float32 whatever
trained the model). The CUDA counterparts are in ``test_cuda.py`` (marked ``gpu``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msmtrec.codec import encode
from msmtrec.device import (
    autocast,
    check_device,
    check_precision,
    host_tensors,
    model_device,
    resolve_device,
)
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_method
from msmtrec.model import build_model, preset
from msmtrec.registry import ModelRegistry
from msmtrec.training.trainer import TrainConfig, Trainer

CUDA = torch.cuda.is_available()
TRAIN = TrainConfig(batch_size=256)


# ------------------------------------------------------------------------------ the flags


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", " CPU "])
def test_device_names_accepted(spec):
    assert check_device(spec) == spec.strip().lower()


@pytest.mark.parametrize("spec", ["gpu", "cuda0", "cuda:", "cuda:-1", "mps", "", "cpu:0"])
def test_a_bad_device_is_an_error_naming_the_field(spec):
    with pytest.raises(ValueError, match=r"^--device: .* is not a device; use auto"):
        check_device(spec, "--device")


def test_precision_names():
    assert check_precision("BF16") == "bf16"
    with pytest.raises(ValueError, match=r"^precision: 'fp16' is not a precision"):
        check_precision("fp16")


def test_auto_is_cuda_exactly_when_cuda_is_available():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused_not_silently_cpu():
    with pytest.raises(ValueError, match=r"^device: 'cuda' asked for CUDA, but torch sees no"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="MSMTREC_CLIENT_DEVICE"):
        resolve_device("cuda:1", "MSMTREC_CLIENT_DEVICE")


def test_a_gpu_index_beyond_the_machine_is_refused():
    count = torch.cuda.device_count() if CUDA else 0
    with pytest.raises(ValueError, match=r"cuda:7"):
        resolve_device(f"cuda:{count + 7}" if CUDA else "cuda:7")


# ------------------------------------------------------------------------- host tensors


def test_host_tensors_are_cpu_float32_copies_and_keep_integer_buffers():
    src = {
        "w": torch.randn(3, 4, dtype=torch.bfloat16),
        "h": torch.randn(5, dtype=torch.float16).as_strided((3,), (2,)),
        "n": torch.tensor(7, dtype=torch.int64),
    }
    out = host_tensors(src)
    assert out["w"].dtype == out["h"].dtype == torch.float32
    assert out["n"].dtype == torch.int64
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in out.values())
    assert torch.equal(out["w"], src["w"].float())
    assert torch.equal(out["h"], src["h"].float())
    f32 = torch.zeros(2)
    copied = host_tensors({"x": f32})["x"]
    f32.add_(1.0)  # a later step on the model must not change what was handed out
    assert copied.sum().item() == 0.0


def test_boundaries_hand_out_float32_even_from_a_bf16_model(small_splits, tmp_path):
    """shared_state (the wire), full_state (local checkpoints) and the registry convert:
    a model whose tensors are bf16 still leaves the client as CPU float32."""
    fed = resolve_method("pfmsmtrec")
    rt = ClientRuntime("S0", small_splits["S0"], preset("small"), fed, TRAIN, seed=0)
    rt.model.to(torch.bfloat16)
    sent = rt.shared_state()
    full = rt.full_state()
    for tensors in (sent, full):
        floats = [t for t in tensors.values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.float32 for t in floats)
    assert {s.dtype for s in encode(sent, rt.sent_names).specs} == {"float32"}
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.publish("S0", rt, round=1)
    loaded = registry.load("S0", version)
    for name, t in loaded.model.state_dict().items():
        want = rt.model.state_dict()[name]
        assert t.device.type == "cpu"
        if t.is_floating_point():
            assert t.dtype == torch.float32
            assert torch.equal(t, want.float())


# ----------------------------------------------------------------------- bf16 on the CPU


def _runtime(splits, precision: str, device: str = "cpu") -> ClientRuntime:
    fed = resolve_method("pfmsmtrec")
    return ClientRuntime(
        "S0", splits["S0"], preset("small"), fed, TRAIN, seed=3, device=device, precision=precision
    )


def test_bf16_autocast_trains_on_the_cpu_and_sends_float32(small_splits):
    """A real bf16 round on the CPU: the parameters and what is sent stay float32, the loss is
    finite and close to (but not equal to: autocast is on) the float32 round's."""
    runs = {}
    for precision in ("fp32", "bf16"):
        rt = _runtime(small_splits, precision)
        start = rt.shared_state()
        rt.receive(start, completed_rounds=0)
        update, fit = rt.train_round(1)
        assert all(p.dtype == torch.float32 for p in rt.model.parameters())
        assert all(t.dtype == torch.float32 for t in update.params.values())
        assert {s.dtype for s in encode(update.params, rt.sent_names).specs} == {"float32"}
        assert np.isfinite(fit.loss)
        probs = rt.trainer.predict(small_splits["S0"].valid)
        assert probs.dtype == np.float32 and np.isfinite(probs).all()
        runs[precision] = (fit.loss, update.params, rt.evaluate("valid"))
    (loss32, params32, valid32), (loss16, params16, valid16) = runs["fp32"], runs["bf16"]
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05
    # the bf16 round moves the weights the way the float32 one does (Adam's step is nearly
    # sign(g) early on, so weights with tiny gradients may differ; the direction agrees)
    d32 = torch.cat([(params32[n] - start[n]).flatten() for n in start])
    d16 = torch.cat([(params16[n] - start[n]).flatten() for n in start])
    cosine = torch.nn.functional.cosine_similarity(d32, d16, dim=0).item()
    assert not torch.equal(d32, d16) and cosine > 0.5
    for task, metrics in valid16.items():
        assert abs(metrics["auc"] - valid32[task]["auc"]) < 0.05


def test_autocast_context_is_a_no_op_in_fp32():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert lin(x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert lin(x).dtype == torch.bfloat16


def test_a_trainer_for_another_model_shares_device_and_precision(small_splits):
    model = build_model(small_splits["S0"].schema, preset("small"), seed=0)
    trainer = Trainer(model, TRAIN, precision="bf16")
    other = trainer.for_model(copy.deepcopy(model))
    assert other.precision == "bf16" and other.config is trainer.config
    assert model_device(other.model) == model_device(model)
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, TRAIN, precision="half")


# --------------------------------------------------------------------------- commands


def test_simulate_device_auto_runs_unchanged_on_this_machine(tmp_path, capsys):
    """``msmtrec simulate --device auto``: on a CPU-only machine the same result as
    ``--device cpu`` (and the default), bit for bit."""
    from msmtrec.data.synth import SynthConfig, synthesize
    from msmtrec_app.cli import main

    data = tmp_path / "data"
    synthesize(data, SynthConfig(scenarios=("NL", "ES"), train_rows=600, test_rows=200))
    results = {}
    for device in ("auto", "cpu"):
        out = tmp_path / device
        argv = ["simulate", "--data", str(data), "--rounds", "1", "--method", "fedavg"]
        argv += ["--device", device, "--out", str(out), "--threads", "1"]
        assert main(argv) == 0
        r = json.loads((out / "results.json").read_text())
        results[device] = (r["test"], r["valid"], [h["train_loss"] for h in r["history"]])
    console = capsys.readouterr().out
    assert f"clients train on {'cuda' if CUDA else 'cpu'}" in console
    if not CUDA:
        assert results["auto"] == results["cpu"]


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_simulate_and_up_refuse_cuda_on_a_machine_without_it(tmp_path, capsys):
    from msmtrec_app.cli import main

    (tmp_path / "d").mkdir()
    assert main(["simulate", "--data", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert main(["up", "--run-dir", str(tmp_path / "up"), "--device", "cuda:0"]) != 0
    err = capsys.readouterr().err
    assert "msmtrec simulate: --device: 'cuda' asked for CUDA" in err
    assert "msmtrec up: --device: 'cuda:0' asked for CUDA" in err
    assert not (tmp_path / "up").exists()  # refused before anything started


def test_a_misspelt_device_flag_is_a_usage_error(capsys):
    from msmtrec_app.cli import main

    with pytest.raises(SystemExit) as info:
        main(["simulate", "--data", ".", "--device", "gpu"])
    assert info.value.code == 2
    assert "'gpu' is not a device" in capsys.readouterr().err


def test_up_passes_the_device_to_clients_and_the_gateway(tmp_path):
    import argparse

    from msmtrec_app.commands.up.children import build_children
    from msmtrec_app.commands.up.ports import Endpoints

    args = argparse.Namespace(
        host="127.0.0.1", rounds=1, method="fedavg", preset="small", seed=0, round_timeout=60,
        threads=1, lr=None, batch_size=None, local_epochs=None, tls=False, startup_timeout=30,
        device="auto", precision="bf16", gateway_device="cpu",
    )  # fmt: skip
    ep = Endpoints("127.0.0.1", {"grpc": 1, "status": 2, "gateway": 3})
    secrets = {"tokens": tmp_path / "t", "NL": tmp_path / "nl"}
    children = build_children(args, ep, tmp_path, tmp_path / "data", ["NL"], secrets)
    # each child reads its settings from the config file up wrote (--config FILE)
    files = {c.role: json.loads(Path(c.args[c.args.index("--config") + 1]).read_text())
             for c in children}  # fmt: skip
    assert (files["client"]["device"], files["client"]["precision"]) == ("auto", "bf16")
    assert files["gateway"]["device"] == "cpu"


def test_service_settings_read_the_device_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from gateway.settings import GatewaySettings
    from scenario_client.settings import ClientSettings
    from servicekit.settings import load_settings

    monkeypatch.setenv("MSMTREC_CLIENT_DEVICE", "cuda:1")
    monkeypatch.setenv("MSMTREC_CLIENT_PRECISION", "bf16")
    client = load_settings(ClientSettings, None, {"scenario": "NL", "data": "d"})
    assert (client.device, client.precision) == ("cuda:1", "bf16")
    monkeypatch.setenv("MSMTREC_CLIENT_DEVICE", "gpu")
    with pytest.raises(ValidationError, match="'gpu' is not a device"):
        load_settings(ClientSettings, None, {"scenario": "NL", "data": "d"})
    monkeypatch.delenv("MSMTREC_CLIENT_DEVICE")
    assert load_settings(ClientSettings, None, {"scenario": "NL", "data": "d"}).device == "auto"
    assert GatewaySettings(registry="r").device == "cpu"
    monkeypatch.setenv("MSMTREC_GATEWAY_DEVICE", "cuda")
    assert GatewaySettings(registry="r").device == "cuda"
    with pytest.raises(ValidationError, match="device"):
        GatewaySettings(registry="r", device="tpu")


# ------------------------------------------------------------------- with privacy (DP-SGD)


def test_dp_with_bf16_is_refused_naming_both_settings(small_splits, monkeypatch, tmp_path):
    """DP-SGD runs in fp32 only: the client, the trainer, the client settings and the
    commands refuse bf16 with DP, each naming the settings involved."""
    from msmtrec.training.config import PrivacyConfig
    from msmtrec.training.privacy import PrivateTraining
    from msmtrec_app.cli import main
    from scenario_client.settings import ClientSettings

    privacy = PrivacyConfig(noise_multiplier=1.0, noise_seed=0)
    fed = resolve_method("pfmsmtrec")
    with pytest.raises(ValueError, match=r"precision 'bf16' with differential privacy"):
        ClientRuntime(
            "S0", small_splits["S0"], preset("small"), fed, TRAIN, 0,
            privacy=privacy, planned_rounds=1, precision="bf16",
        )  # fmt: skip
    model = build_model(small_splits["S0"].schema, preset("small"), seed=0)
    private = PrivateTraining(privacy, len(small_splits["S0"].train), 64, 1, seed=0)
    with pytest.raises(ValueError, match=r"dp_noise_multiplier.*use precision fp32"):
        Trainer(model, TRAIN, private, precision="bf16").fit(small_splits["S0"].train, seed=0)
    monkeypatch.setenv("MSMTREC_CLIENT_PRECISION", "bf16")
    monkeypatch.setenv("MSMTREC_CLIENT_DP_EPSILON", "4")
    with pytest.raises(ValueError, match=r"precision 'bf16' with differential privacy"):
        ClientSettings(scenario="S0", data="d")
    with pytest.raises(SystemExit, match=r"--precision bf16 with differential privacy"):
        main(["simulate", "--data", str(tmp_path), "--dp-epsilon", "4",
              "--precision", "bf16", "--device", "cpu"])  # fmt: skip
