"""The one experiment settings model (msmtrec.experiment) behind simulate, the aggregator,
the clients and up: one declaration per knob, one mapping to TrainConfig and the spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from msmtrec.experiment import (
    PRIVACY_FIELDS,
    PROTOCOL_FIELDS,
    ExperimentSettings,
    PrivacySettings,
    ProtocolSettings,
    field_errors,
    train_config,
)
from msmtrec.federation.config import DEFAULT_METHOD, FederationConfig
from msmtrec.simulation import SimulationConfig
from msmtrec.spec import PROTOCOL_FIELDS as SPEC_PROTOCOL_FIELDS
from msmtrec.spec import FederationSpec
from msmtrec.training.config import TrainConfig
from scenario_client.settings import ClientSettings


def test_defaults_are_the_spec_and_simulation_defaults():
    settings = ExperimentSettings()
    assert settings.spec() == FederationSpec()
    assert train_config(settings) == TrainConfig()
    assert settings.privacy() is None
    sim = SimulationConfig(data_dir=Path("d"))
    for name in SPEC_PROTOCOL_FIELDS:  # the bridge copies exactly these, by name
        assert getattr(sim, name) == getattr(FederationSpec(), name), name
    assert settings.method == DEFAULT_METHOD == FederationConfig().method == sim.method


def test_the_bridge_both_ways_keeps_every_protocol_field(tmp_path):
    spec = ExperimentSettings(
        method="ditto", rounds=3, seed=7, lr=0.01, batch_size=64, ditto_lambda=0.2,
        client_fraction=0.5, ctcvr_head="esmm", valid_fraction=0.2,
    ).spec()  # fmt: skip
    sim = spec.to_simulation(tmp_path, ("A", "B"), progress=True, device="cpu")
    assert (sim.data_dir, sim.scenarios, sim.progress) == (tmp_path, ("A", "B"), True)
    assert FederationSpec.from_simulation(sim) == spec
    assert spec.train == TrainConfig(lr=0.01, batch_size=64)
    assert spec.federation().ditto_lambda == 0.2
    assert spec.model_config().ctcvr_head == "esmm"


def test_services_inherit_the_fields_rather_than_redeclare_them():
    assert issubclass(AggregatorSettings, ProtocolSettings)
    assert issubclass(ClientSettings, PrivacySettings)
    for name in PROTOCOL_FIELDS:
        assert repr(AggregatorSettings.model_fields[name]) == repr(
            ProtocolSettings.model_fields[name]
        )
    for name in PRIVACY_FIELDS:
        assert repr(ClientSettings.model_fields[name]) == repr(PrivacySettings.model_fields[name])


def test_aggregator_spec_is_the_experiment_spec():
    knobs = {"method": "fedprox", "rounds": 4, "mu": 0.05, "local_epochs": 2, "seed": 3}
    agg = AggregatorSettings(insecure_dev=True, scenarios=["A"], **knobs)
    assert agg.spec() == ExperimentSettings(**knobs).spec()
    assert agg.spec().digest() == ExperimentSettings(**knobs).spec().digest()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"method": "fedmagic"}, "method"),
        ({"preset": "huge"}, "preset"),
        ({"rounds": 0}, "rounds"),
        ({"client_fraction": 1.5}, "client_fraction"),
        ({"conflict": "maybe"}, "conflict"),
        ({"dataset": "nosuch"}, "dataset"),
        ({"roundz": 3}, "roundz"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_field(values, field):
    with pytest.raises(ValidationError) as info:
        ExperimentSettings(**values)
    assert field_errors(info.value).startswith(f"{field}: ")


def test_the_aggregator_refuses_pooled_references_but_simulate_takes_them():
    assert ExperimentSettings(method="central").method == "central"
    with pytest.raises(ValidationError, match="method"):
        AggregatorSettings(insecure_dev=True, scenarios=["A"], method="central")


def test_privacy_settings_map_to_the_privacy_config():
    assert PrivacySettings(dp_epsilon="").privacy() is None  # compose's empty variable
    cfg = PrivacySettings(dp_epsilon=3.0, dp_max_grad_norm=0.5).privacy()
    assert (cfg.epsilon, cfg.max_grad_norm, cfg.noise_multiplier) == (3.0, 0.5, None)
    with pytest.raises(ValueError, match="dp_delta"):
        PrivacySettings(dp_delta=1e-5).privacy()


def test_the_dataset_spec_travels_in_the_federation_spec(tmp_path):
    from msmtrec.data.schema import ALIEXPRESS
    from msmtrec.data.spec_file import load_spec

    assert ExperimentSettings().spec().schema == ALIEXPRESS
    assert ExperimentSettings().spec().to_dict() == ExperimentSettings().spec().to_dict()
    tenrec = ExperimentSettings(dataset="tenrec").spec()
    assert tenrec.schema == load_spec("tenrec") and tenrec.schema.tasks == ("click", "like")
    assert tenrec.digest() != ExperimentSettings().spec().digest()
    assert tenrec.to_simulation(tmp_path).schema == tenrec.schema
    with pytest.raises(ValueError, match="nosuch"):
        ExperimentSettings(dataset="nosuch")


def test_from_values_reads_a_namespace_and_keeps_defaults_for_unset():
    import argparse

    ns = argparse.Namespace(method="fedavg", lr=None, rounds=2, data="x", dp_epsilon=None)
    settings = ExperimentSettings.from_values(ns)
    assert (settings.method, settings.rounds, settings.lr) == ("fedavg", 2, TrainConfig().lr)
    assert dataclasses.asdict(settings.train_config())["lr"] == TrainConfig().lr
