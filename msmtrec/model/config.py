"""Model configuration: presets and the [chosen] switches of ALGORITHM.md §2–3."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Template = Literal["additive3", "additive2", "two_part", "none"]
CtcvrHead = Literal["direct", "esmm"]
TEMPLATES: tuple[str, ...] = ("additive3", "additive2", "two_part", "none")
CTCVR_HEADS: tuple[str, ...] = ("direct", "esmm")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of the templated MMoE.

    ``template``: how every expert Linear is split — ``additive3`` (W_G + W_S + W_T[t]),
    ``additive2`` (W_G + W_S, one view shared by all tasks: task specificity lives in the
    gates and towers, and each expert runs once per sample instead of once per task),
    ``two_part`` (W_S + W_T[t]) or ``none`` (one plain weight, shared by all tasks).
    ``ctcvr_head``: ``direct`` (own tower on the conversion label, MTReclib) or ``esmm``
    (p_ctcvr = p_ctr · p_cvr, so CTCVR never exceeds CTR).
    """

    embed_dim: int = 16
    num_experts: int = 4
    expert_dims: tuple[int, ...] = (64, 32)
    tower_dims: tuple[int, ...] = (32, 16)
    dropout: float = 0.2
    template: Template = "additive3"
    ctcvr_head: CtcvrHead = "direct"
    # Input layer split like the experts: the embedding table E_G (+ the numerical
    # projection) is shared, E_S (zero-initialised) is the scenario's own additive part.
    embedding_template: bool = False

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if self.ctcvr_head not in CTCVR_HEADS:
            raise ValueError(f"ctcvr_head must be one of {CTCVR_HEADS}, got {self.ctcvr_head!r}")
        if self.embed_dim < 1 or self.num_experts < 1 or not self.expert_dims:
            raise ValueError("embed_dim, num_experts and expert_dims must be positive/non-empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def with_(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["embedding_template"]:  # older configurations serialise as before
            del d["embedding_template"]
        d["expert_dims"] = list(self.expert_dims)
        d["tower_dims"] = list(self.tower_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["expert_dims"] = tuple(d["expert_dims"])
        d["tower_dims"] = tuple(d["tower_dims"])
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # MTReclib sizes: ≈10 M parameters for a plain MMoE.
    "paper": ModelConfig(
        embed_dim=128, num_experts=8, expert_dims=(512, 256), tower_dims=(128, 64), dropout=0.2
    ),
    # Demos, tests and CI.
    "small": ModelConfig(
        embed_dim=16, num_experts=4, expert_dims=(64, 32), tower_dims=(32, 16), dropout=0.2
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].with_(**overrides)
