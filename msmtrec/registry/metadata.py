"""What a version records and returns: ``VersionInfo``, ``LoadedModel`` and strict-JSON metadata."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msmtrec.data.schema import FeatureSchema
from msmtrec.model.config import PRESETS, ModelConfig
from msmtrec.model.mmoe import MultiTaskMMoE


def validation_auc(metrics: dict) -> float | None:
    """Mean AUC over the tasks of ``metrics["valid"]`` (undefined AUCs skipped)."""
    tasks = (metrics or {}).get("valid") or {}
    aucs = [m.get("auc") for m in tasks.values() if isinstance(m, dict)]
    aucs = [a for a in aucs if isinstance(a, int | float)]
    return sum(aucs) / len(aucs) if aucs else None


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as described by its metadata.json."""

    scenario: str
    version: str
    round: int
    created: str
    path: Path
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.metadata["schema"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.metadata["model_config"])

    def summary(self) -> dict[str, Any]:
        """What a status API shows: identity, round, metrics — not the whole schema."""
        return {
            "version": self.version,
            "round": self.round,
            "created": self.created,
            "preset": self.metadata.get("preset"),
            "tasks": self.metadata.get("tasks"),
            "metrics": self.metrics,
            "sha256": self.sha256,
        }


@dataclass
class LoadedModel:
    """A verified model in eval mode plus what it was published with."""

    info: VersionInfo
    model: MultiTaskMMoE
    schema: FeatureSchema
    config: ModelConfig


def _jsonable(value: Any) -> Any:
    """Metrics come from numpy/torch code: make them strict JSON (NaN/inf become null)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in registry metadata")


def preset_name(config: ModelConfig) -> str:
    """The preset whose sizes the config has (template/head/dropout are switches, not sizes)."""
    for name, p in PRESETS.items():
        if (p.embed_dim, p.num_experts, p.expert_dims, p.tower_dims) == (
            config.embed_dim,
            config.num_experts,
            config.expert_dims,
            config.tower_dims,
        ):
            return name
    return "custom"
