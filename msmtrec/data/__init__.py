"""Data: feature schema, AliExpress loader and raw preparer, synthetic generator."""

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.loader import (
    DataValidationError,
    list_scenarios,
    load_scenario,
    load_split,
    write_split,
)
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema, aliexpress_schema

__all__ = [
    "ALIEXPRESS",
    "DataValidationError",
    "FeatureSchema",
    "ScenarioData",
    "ScenarioSplits",
    "aliexpress_schema",
    "list_scenarios",
    "load_scenario",
    "load_split",
    "write_split",
]
