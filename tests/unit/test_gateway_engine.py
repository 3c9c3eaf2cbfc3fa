"""The compiled serving engine equals the eager model; request parsing is exact and strict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gateway_support import fixture_instances, trained_like_model

from gateway.engine import CompiledMMoE, EagerMMoE, compile_model, random_batch
from gateway.features import FeaturePlan, InstanceError
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.model import MultiTaskMMoE


@pytest.mark.parametrize("template", ["additive3", "two_part", "none"])
@pytest.mark.parametrize("head", ["direct", "esmm"])
def test_compiled_engine_matches_eager_forward(template, head):
    model = trained_like_model(seed=7, template=template, ctcvr_head=head)
    cat, num = random_batch(model, 300, seed=1)
    with torch.inference_mode():
        want = torch.sigmoid(model(cat, num))
        got = CompiledMMoE(model)(cat, num)
    assert got.shape == want.shape == (300, 2)
    assert (got - want).abs().max().item() <= 1e-6


def test_compiled_engine_matches_eager_forward_paper_preset():
    model = trained_like_model(seed=8, preset_name="paper")
    cat, num = random_batch(model, 100, seed=2)
    with torch.inference_mode():
        want = torch.sigmoid(model(cat, num))
        got = CompiledMMoE(model)(cat, num)
    assert (got - want).abs().max().item() <= 1e-6


def test_a_model_the_compiler_does_not_understand_is_served_eagerly(caplog):
    """If the module computes something folding does not know about (here: a shifted logit),
    the load-time check catches the disagreement and the module itself is served."""
    model = trained_like_model(seed=9)
    assert isinstance(compile_model(model), CompiledMMoE)
    model.forward = lambda cat, num: MultiTaskMMoE.forward(model, cat, num) + 1.0
    engine = compile_model(model)
    assert isinstance(engine, EagerMMoE)
    assert "serving the eager module" in caplog.text
    cat, num = random_batch(model, 8)
    with torch.inference_mode():
        torch.testing.assert_close(engine(cat, num), torch.sigmoid(model(cat, num)))


def test_non_finite_model_is_refused():
    model = trained_like_model(seed=10)
    with torch.no_grad():
        model.towers["ctr"].head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        compile_model(model)


@pytest.fixture(scope="module")
def plan():
    return FeaturePlan(ALIEXPRESS)


def test_parse_builds_arrays_in_schema_order(plan):
    instances = fixture_instances("train")
    batch = plan.parse({"instances": instances}, 1000)
    assert batch.categorical.dtype == np.int64 and batch.numerical.dtype == np.float32
    assert batch.categorical.shape == (100, 16) and batch.numerical.shape == (100, 63)
    assert batch.categorical[5, 4] == instances[5]["categorical_5"]
    assert batch.numerical[7, 62] == np.float32(instances[7]["numerical_63"])
    assert batch.oov is None


def test_parse_maps_large_ids_to_oov_and_accepts_integral_floats(plan):
    inst = dict(fixture_instances("test")[0], categorical_1=11, categorical_2=3.0)
    inst["categorical_7"] = 10**12
    batch = plan.parse({"instances": [inst]}, 10)
    assert batch.categorical[0, 0] == 11 and batch.categorical[0, 6] == 50
    assert batch.categorical[0, 1] == 3
    assert batch.oov.tolist() == [1, 0, 0, 0, 0, 0, 1] + [0] * 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"categorical_9": 2**63}, "instances[0].categorical_9: id 9223372036854775808 is beyond"),
        ({"categorical_9": 10**400}, "instances[0].categorical_9: id 1000000000"),
        ({"numerical_5": 10**400}, "instances[0].numerical_5: value"),
        ({"numerical_5": [1]}, "instances[0].numerical_5: expected a number, got [1]"),
        ({"categorical_1": "3"}, 'instances[0].categorical_1: expected an integer id, got "3"'),
    ],
)
def test_parse_errors_name_instance_and_field(plan, change, message):
    inst = dict(fixture_instances("test")[0], **change)
    with pytest.raises(InstanceError) as err:
        plan.parse({"instances": [inst]}, 10)
    assert str(err.value).startswith(message)


def test_settings_flags_override_environment(monkeypatch, tmp_path):
    from gateway.cli import settings_from_args
    from msmtrec_app.cli import build_parser

    monkeypatch.setenv("MSMTREC_GATEWAY_REGISTRY", str(tmp_path))
    monkeypatch.setenv("MSMTREC_GATEWAY_MAX_BATCH", "64")
    monkeypatch.setenv("MSMTREC_GATEWAY_PORT", "9000")
    args = build_parser().parse_args(["gateway", "--port", "9100", "--workers", "0"])
    s = settings_from_args(args)
    assert (s.registry, s.max_batch, s.port, s.workers) == (tmp_path, 64, 9100, 0)
    assert s.host == "127.0.0.1" and s.threads == 1 and s.engine == "compiled"
    assert s.body_limit == (64 << 10) + 64 * (8 << 10)
