"""The templated multi-task MMoE."""

from msmtrec.model.config import PRESETS, ModelConfig, preset
from msmtrec.model.mmoe import MultiTaskMMoE, build_model, count_parameters

__all__ = ["PRESETS", "ModelConfig", "MultiTaskMMoE", "build_model", "count_parameters", "preset"]
