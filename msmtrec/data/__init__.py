"""Data: feature schema, AliExpress loader and raw preparer, synthetic generator."""

from msmtrec.data.aliexpress_raw import prepare_aliexpress
from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.loader import (
    DataValidationError,
    list_scenarios,
    load_scenario,
    load_split,
    write_split,
)
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema, aliexpress_schema
from msmtrec.data.synth import SynthConfig, generate, synthesize

__all__ = [
    "ALIEXPRESS",
    "DataValidationError",
    "FeatureSchema",
    "ScenarioData",
    "ScenarioSplits",
    "SynthConfig",
    "aliexpress_schema",
    "generate",
    "list_scenarios",
    "load_scenario",
    "load_split",
    "prepare_aliexpress",
    "synthesize",
    "write_split",
]
