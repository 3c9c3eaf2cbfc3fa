"""Data: feature schema, AliExpress loader and raw preparer, synthetic generator."""

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema, aliexpress_schema

__all__ = ["ALIEXPRESS", "FeatureSchema", "ScenarioData", "ScenarioSplits", "aliexpress_schema"]
