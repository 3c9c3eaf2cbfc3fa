"""The method registry: names, defaults, knobs, the networked flag, and adding a method."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from msmtrec.federation.config import METHOD_KNOBS, METHODS, FederationConfig, resolve_method
from msmtrec.federation.groups import Policy
from msmtrec.federation.methods import (
    Method,
    check_networked,
    get_method,
    method_names,
    register,
)
from msmtrec.federation.methods import registry as registry_module
from msmtrec_app.cli import main

BEFORE_THE_REGISTRY = (
    "local", "fedavg", "fedprox", "fedbn", "pfmsmtrec", "central",
    "pfmsmtrec-no-template", "pfmsmtrec-no-fedbn", "pfmsmtrec-no-conflict",
    "pfmsmtrec-no-personal", "pfmsmtrec-no-tower", "pfmsmtrec-mu0", "pfmsmtrec-no-shrink",
)  # fmt: skip
NEW = ("fedrep", "ditto", "fedavg-ft", "central-msmt")


def test_names_keep_the_old_order_and_add_the_new_methods():
    assert method_names() == METHODS
    assert METHODS[: len(BEFORE_THE_REGISTRY)] == BEFORE_THE_REGISTRY
    assert set(NEW) <= set(METHODS)
    assert set(method_names(networked=False)) == {"central", "central-msmt"}
    assert set(method_names(networked=True)) == set(METHODS) - {"central", "central-msmt"}


@pytest.mark.parametrize("name", method_names())
def test_every_method_resolves_to_its_defaults_and_round_trips(name):
    method = get_method(name)
    cfg = resolve_method(name)
    assert cfg == method.defaults
    assert get_method(method.family).policies is not None
    assert FederationConfig.from_dict(cfg.to_dict()) == cfg
    assert method.description and "\n" not in method.description
    for knob, values in method.tunable.items():
        assert values, knob
        for v in values:  # every candidate the benchmark tries is accepted
            assert getattr(resolve_method(name, **{knob: v}), knob) == v


def test_older_methods_serialise_without_the_new_knobs():
    """FederationConfig.to_dict() is in checkpoints and spec digests: unchanged for them."""
    for name in BEFORE_THE_REGISTRY:
        assert not set(METHOD_KNOBS) & set(resolve_method(name).to_dict()), name
    assert resolve_method("ditto").to_dict()["ditto_lambda"] == 0.1
    assert resolve_method("fedavg-ft").to_dict()["finetune_epochs"] == 1
    assert resolve_method("fedrep").to_dict()["head_epochs"] == 1


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown method 'fedsgd'; choose one of local, "):
        get_method("fedsgd")
    with pytest.raises(ValueError, match="unknown method"):
        resolve_method("fedsgd")


def test_knobs_are_checked_and_name_the_field():
    assert resolve_method("ditto", ditto_lambda=0.3).ditto_lambda == 0.3
    assert resolve_method("fedavg-ft", finetune_epochs=2).finetune_epochs == 2
    with pytest.raises(ValueError, match="ditto_lambda is not a knob of method 'fedavg'"):
        resolve_method("fedavg", ditto_lambda=0.3)
    with pytest.raises(ValueError, match="ditto_lambda must be >= 0"):
        resolve_method("ditto", ditto_lambda=-1.0)
    with pytest.raises(ValueError, match="finetune_epochs must be an integer >= 0"):
        resolve_method("fedavg-ft", finetune_epochs=1.5)
    with pytest.raises(ValueError, match="unknown federation override 'lambda'"):
        resolve_method("ditto", **{"lambda": 0.3})


def test_central_methods_are_refused_networked_saying_why():
    for name in ("central", "central-msmt"):
        with pytest.raises(ValueError, match="pools the data of every scenario"):
            check_networked(name)
    assert check_networked("ditto").name == "ditto"


def test_the_aggregator_refuses_a_central_spec(tmp_path):
    from aggregator.checkpoint import CheckpointStore
    from aggregator.federation import Federation
    from msmtrec.spec import FederationSpec

    store = CheckpointStore(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match="method 'central' pools the data of every scenario"):
        Federation(FederationSpec(method="central"), ["A", "B"], store, min_clients=1)


def test_aggregator_settings_accept_networked_methods_and_refuse_central():
    for name in ("fedrep", "ditto", "fedavg-ft"):
        assert AggregatorSettings(method=name, insecure_dev=True).spec().method == name
    with pytest.raises(ValidationError, match="runs only in `msmtrec simulate`"):
        AggregatorSettings(method="central-msmt", insecure_dev=True)
    spec = AggregatorSettings(method="ditto", ditto_lambda=0.5, insecure_dev=True).spec()
    assert spec.federation().ditto_lambda == 0.5


def test_up_refuses_a_central_method_before_starting_anything(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["up", "--method", "central", "--run-dir", str(tmp_path)])
    assert info.value.code == 2
    assert "runs only in `msmtrec simulate`" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_register_refuses_duplicates_orphans_and_variant_hooks():
    fedavg = get_method("fedavg")
    with pytest.raises(ValueError, match="already registered"):
        register(fedavg)
    with pytest.raises(ValueError, match="family 'nope' is not registered"):
        register(Method("x-orphan", "d", FederationConfig("nope")))
    with pytest.raises(ValueError, match="policies and client hooks come from the family"):
        register(Method("x-variant", "d", fedavg.defaults, policies=fedavg.policies))
    with pytest.raises(ValueError, match="needs its policies"):
        register(Method("x-family", "d", FederationConfig("x-family")))
    with pytest.raises(ValueError, match="unknown tunable knobs"):
        register(Method("x-knob", "d", fedavg.defaults, tunable={"nu": (1,)}))
    assert "x-orphan" not in method_names()


def test_adding_a_method_is_one_register_call():
    """A new family: a name, defaults and a policy table; it resolves and sends what its
    table says, with no other module touched."""
    table = get_method("fedbn").policies
    method = Method(
        "x-fedbn-prox", "fedbn with a proximal term", FederationConfig("x-fedbn-prox", mu=0.1),
        policies=table,
    )  # fmt: skip
    register(method)
    try:
        cfg = resolve_method("x-fedbn-prox", mu=0.2)
        assert cfg.mu == 0.2 and cfg.method == "x-fedbn-prox"
        groups = cfg.parameter_groups()
        assert groups.policy("towers.ctr.head.weight") is Policy.FEDAVG
        assert groups.policy("experts.norms.0.running_mean") is Policy.KEEP
        assert "x-fedbn-prox" in method_names(networked=True)
    finally:
        del registry_module._REGISTRY["x-fedbn-prox"]


def test_method_records_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_method("ditto").networked = False  # type: ignore[misc]
