"""Record-level differential privacy (msmtrec.training.privacy, issue #14).

The private path differs from plain training in two stated ways: batches are Poisson samples
and BatchNorm normalises with fixed statistics. With those held equal, a private step with
an infinite clip and no noise must be the plain step bit for bit; the clipping must bound
every per-sample gradient (checked against per-sample gradients computed one row at a time
by plain autograd); the noise must depend on its seed; the ε must be Opacus' own.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_experiment
from msmtrec.model import build_model, preset
from msmtrec.training import TrainConfig
from msmtrec.training.config import PrivacyConfig
from msmtrec.training.privacy import (
    DPSGD,
    PrivacyBudgetExceeded,
    PrivateTraining,
    freeze_batchnorm,
    per_sample_grad_norms,
)
from msmtrec.training.trainer import make_optimizer


def _batch(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, s, (b,), generator=g) for s in ALIEXPRESS.table_sizes], 1)
    num = torch.rand(b, ALIEXPRESS.num_numerical, generator=g)
    labels = (torch.rand(b, 2, generator=g) < 0.3).to(torch.uint8)
    return cat, num, labels


def _moved_model(template: str = "additive3", head: str = "direct", dropout: float = 0.0):
    """A model whose template parts and BatchNorm statistics are not at their init values
    (so every term of the per-sample norms is exercised)."""
    model = build_model(
        ALIEXPRESS, preset("small", template=template, ctcvr_head=head, dropout=dropout), 0
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.uniform_(0.5, 2.0, generator=g)
    model.train()
    freeze_batchnorm(model)
    return model


def test_no_noise_infinite_clip_is_the_plain_step_bit_for_bit():
    cat, num, labels = _batch(256)
    models = [build_model(ALIEXPRESS, preset("small"), 3) for _ in range(2)]  # dropout 0.2
    grads = []
    for private, model in zip((False, True), models, strict=True):
        model.train()
        freeze_batchnorm(model)
        params = dict(model.named_parameters())
        opt = make_optimizer(params.values(), lr=3e-3, weight_decay=1e-6)
        torch.manual_seed(7)  # the same dropout masks in both paths
        if private:
            DPSGD(math.inf, 0.0).gradient(model, params, cat, num, labels, 256)
        else:  # the plain trainer's step
            opt.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(cat, num), labels.float()).backward()
        grads.append({n: p.grad.clone() for n, p in params.items()})
        opt.step()
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
    a, b = (m.state_dict() for m in models)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    # not vacuous: a finite clip changes the step
    c = build_model(ALIEXPRESS, preset("small"), 3)
    c.train()
    freeze_batchnorm(c)
    torch.manual_seed(7)
    DPSGD(0.01, 0.0).gradient(c, dict(c.named_parameters()), cat, num, labels, 256)
    assert not torch.equal(c.experts.layers[0].weight_g.grad, grads[0]["experts.layers.0.weight_g"])


def _per_row_grads(model, cat, num, labels):
    """Per-sample gradients by plain autograd, one row at a time (the reference)."""
    rows = []
    for i in range(len(labels)):
        model.zero_grad(set_to_none=True)
        out = model(cat[i : i + 1], num[i : i + 1])
        F.binary_cross_entropy_with_logits(out, labels[i : i + 1].float()).backward()
        rows.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    return rows


@pytest.mark.parametrize(
    ("template", "head"),
    [("additive3", "direct"), ("additive2", "esmm"), ("two_part", "direct"), ("none", "esmm")],
)
def test_clipping_bounds_every_per_sample_gradient(template, head):
    model = _moved_model(template, head)
    cat, num, labels = _batch(24, seed=2)
    ref = _per_row_grads(model, cat, num, labels)
    ref_norms = torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in r.values())) for r in ref])
    params = dict(model.named_parameters())
    _, _, norms = per_sample_grad_norms(model, params, cat, num, labels)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-4, atol=1e-7)
    clip = float(ref_norms.median())  # about half the rows are clipped
    DPSGD(clip, 0.0).gradient(model, params, cat, num, labels, expected_batch_size=24)
    factors = torch.clamp(clip / (ref_norms + 1e-6), max=1.0)
    assert (factors < 1).sum() >= 8
    for r, f in zip(ref, factors, strict=True):  # every clipped contribution is within C
        contribution = math.sqrt(sum(float((f * g).pow(2).sum()) for g in r.values()))
        assert contribution <= clip * (1 + 1e-5)
    for n, p in params.items():  # and the gradient is their mean over the batch
        expected = sum(f * r[n] for r, f in zip(ref, factors, strict=True)) / 24
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)


def test_frozen_parameters_are_left_out_of_the_norm():
    model = _moved_model()
    cat, num, labels = _batch(8)
    body = {n: p for n, p in model.named_parameters() if n.startswith("experts.layers")}
    ref = _per_row_grads(model, cat, num, labels)
    want = torch.stack([torch.sqrt(sum(r[n].pow(2).sum() for n in body)) for r in ref])
    _, _, norms = per_sample_grad_norms(model, body, cat, num, labels)
    torch.testing.assert_close(norms, want, rtol=1e-4, atol=1e-7)


def test_batch_statistics_are_refused():
    model = build_model(ALIEXPRESS, preset("small"), 0)
    model.train()  # BatchNorm with batch statistics: no per-sample bound
    cat, num, labels = _batch(8)
    with pytest.raises(RuntimeError, match="fixed statistics"):
        per_sample_grad_norms(model, dict(model.named_parameters()), cat, num, labels)


def _runtime(splits, privacy, method="pfmsmtrec", rounds=2, **train):
    fed, model_cfg = resolve_experiment(method, "small")
    return ClientRuntime(
        "S0",
        splits["S0"],
        model_cfg,
        fed,
        TrainConfig(batch_size=512, **train),
        seed=0,
        privacy=privacy,
        planned_rounds=rounds,
    )


def test_noise_seeds_give_different_shared_updates(small_splits):
    shared = []
    for seed in (1, 2, 1):
        rt = _runtime(small_splits, PrivacyConfig(epsilon=3.0, noise_seed=seed))
        update, _ = rt.train_round(1)
        shared.append(update.params)
        assert 0 < update.metrics["dp_epsilon"] <= 3.0
        assert "train_loss" not in update.metrics  # a non-private function of the rows
    names = list(shared[0])
    assert any(not torch.equal(shared[0][n], shared[1][n]) for n in names)
    assert all(torch.equal(shared[0][n], shared[2][n]) for n in names)  # seeded: reproducible


def test_no_seed_draws_a_secret_one(small_splits):
    a = _runtime(small_splits, PrivacyConfig(noise_multiplier=1.0)).train_round(1)[0].params
    b = _runtime(small_splits, PrivacyConfig(noise_multiplier=1.0)).train_round(1)[0].params
    assert any(not torch.equal(a[n], b[n]) for n in a)


def test_accountant_matches_opacus_own_computation():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    private = PrivateTraining(PrivacyConfig(epsilon=2.0), 10_000, 256, planned_steps=300, seed=0)
    sigma = get_noise_multiplier(
        target_epsilon=2.0, target_delta=1e-4, sample_rate=256 / 10_000, steps=300
    )
    assert private.noise_multiplier == sigma and private.delta == 1e-4
    reference = RDPAccountant()
    for _ in range(300):
        private.accountant.step(private.noise_multiplier, private.sample_rate)
        reference.step(noise_multiplier=sigma, sample_rate=256 / 10_000)
    assert private.epsilon == reference.get_epsilon(delta=1e-4)
    assert 1.98 <= private.epsilon <= 2.0  # calibrated to the budget over the planned steps


def test_round_that_would_exceed_the_budget_is_refused(small_splits):
    # fixed noise and a cap just above one round's ε: round 1 trains, round 2 is refused
    probe = _runtime(small_splits, PrivacyConfig(noise_multiplier=1.0, noise_seed=0))
    probe.train_round(1)
    one_round = probe.privacy.epsilon
    cap = PrivacyConfig(epsilon=1.1 * one_round, noise_multiplier=1.0, noise_seed=0)
    rt = _runtime(small_splits, cap)
    rt.train_round(1)
    before = rt.shared_state()
    steps = rt.privacy.accountant.steps
    with pytest.raises(PrivacyBudgetExceeded, match=r"S0: round 2 would spend ε .* budget"):
        rt.train_round(2)
    after = rt.shared_state()
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing trained
    assert rt.privacy.accountant.steps == steps  # nothing spent


def test_calibrated_budget_covers_exactly_the_planned_rounds(small_splits):
    rt = _runtime(small_splits, PrivacyConfig(epsilon=4.0, noise_seed=0), rounds=2)
    rt.train_round(1)
    rt.train_round(2)
    assert 3.9 <= rt.privacy.epsilon <= 4.0
    with pytest.raises(PrivacyBudgetExceeded, match="round 3"):
        rt.train_round(3)


def test_fedrep_plans_its_head_epochs_as_private_steps(small_splits):
    rt = _runtime(small_splits, PrivacyConfig(epsilon=8.0, noise_seed=0), method="fedrep")
    assert rt.hooks.private_epochs(rt) == 2  # one head epoch + one body epoch
    rt.train_round(1)
    rt.train_round(2)
    assert rt.privacy.accountant.steps == rt.privacy.planned_steps


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"delta": 1e-5}, "dp_delta"),
        ({"max_grad_norm": 1.0}, "dp_max_grad_norm"),
        ({"epsilon": math.inf}, "dp_epsilon"),
        ({"epsilon": 0.0}, "dp_epsilon"),
        ({"epsilon": 1.0, "delta": 1.0}, "dp_delta"),
        ({"noise_multiplier": -1.0}, "dp_noise_multiplier"),
        ({"epsilon": 1.0, "max_grad_norm": 0.0}, "dp_max_grad_norm"),
    ],
)
def test_bad_privacy_settings_name_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        PrivacyConfig.from_values(**values)


def test_privacy_off_without_epsilon_or_noise():
    assert PrivacyConfig.from_values() is None
    cfg = PrivacyConfig.from_values(epsilon=8.0)
    assert cfg is not None and cfg.enabled and cfg.max_grad_norm == 1.0


def test_client_settings_read_dp_from_env_and_treat_empty_as_unset(monkeypatch, tmp_path):
    from scenario_client.settings import ClientSettings
    from servicekit.settings import load_settings

    base = {"scenario": "NL", "data": tmp_path, "insecure": True}
    monkeypatch.setenv("MSMTREC_CLIENT_DP_EPSILON", "8")
    monkeypatch.setenv("MSMTREC_CLIENT_DP_DELTA", "")  # compose's ${MSMTREC_DP_DELTA:-}
    settings = load_settings(ClientSettings, None, base)
    assert settings.privacy() == PrivacyConfig(epsilon=8.0)
    monkeypatch.setenv("MSMTREC_CLIENT_DP_EPSILON", "")
    assert load_settings(ClientSettings, None, base).privacy() is None
    monkeypatch.setenv("MSMTREC_CLIENT_DP_MAX_GRAD_NORM", "2")
    with pytest.raises(ValueError, match="dp_max_grad_norm set without dp_epsilon"):
        load_settings(ClientSettings, None, base)


def test_simulate_and_up_flags(tmp_path):
    import argparse

    from msmtrec_app.commands.simulate import add_privacy_args, privacy_from_args

    p = argparse.ArgumentParser()
    add_privacy_args(p)
    cfg = privacy_from_args(p.parse_args(["--dp-epsilon", "3", "--dp-max-grad-norm", "0.5"]))
    assert cfg == PrivacyConfig(epsilon=3.0, max_grad_norm=0.5)
    with pytest.raises(SystemExit, match="--dp-delta"):
        privacy_from_args(p.parse_args(["--dp-delta", "1e-5"]))
