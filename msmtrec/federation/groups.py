"""The parameter-group table: the one place that decides what leaves a client.

Every tensor of the model's ``state_dict`` (buffers included) is classified by name into a
:class:`Group`; a strategy then gives each group a :class:`Policy`. Training (which tensors
the regularizer anchors), the wire protocol (which tensors are sent) and the server (how each
is aggregated) all read this table. A tensor that no rule matches is an error, never a silent
default: that is how BatchNorm's ``num_batches_tracked`` ends up averaged in other frameworks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the table is imported by light-weight commands
    import torch


class Group(StrEnum):
    GLOBAL = "global"  # expert W_G (or the plain expert weight with template "none")
    SCENARIO = "scenario"  # expert W_S
    TASK = "task"  # expert W_T[t]
    BN = "bn"  # BatchNorm γ, β, running mean/var (experts and towers)
    BN_COUNTER = "bn_counter"  # BatchNorm num_batches_tracked (int64, shape ())
    EMBEDDING = "embedding"  # categorical tables and the numerical projection
    EMBEDDING_SCENARIO = "embedding_scenario"  # E_S of the embedding template (never sent)
    EMBEDDING_PRIVATE = "embedding_private"  # tables of policy "private" (never sent)
    GATE = "gate"  # per-task gates
    TOWER = "tower"  # tower Linear weights and biases


class Policy(StrEnum):
    KEEP = "keep"  # never leaves the client
    FEDAVG = "fedavg"  # sample-weighted mean; every client receives the same value
    PERSONAL_EXPERT = "personal_expert"  # conflict coordination + personalized aggregation
    PERSONAL_TOWER = "personal_tower"  # cross-attention personalized aggregation


# (pattern, group); the first match wins. Names come from msmtrec.model.mmoe.
RULES: tuple[tuple[str, Group], ...] = (
    (r"^experts\.layers\.\d+\.(weight|bias)_g$", Group.GLOBAL),
    (r"^experts\.layers\.\d+\.(weight|bias)_s$", Group.SCENARIO),
    (r"^experts\.layers\.\d+\.(weight|bias)_t$", Group.TASK),
    (r"(^experts\.norms\.\d+|\.norm)\.num_batches_tracked$", Group.BN_COUNTER),
    (r"(^experts\.norms\.\d+|\.norm)\.(weight|bias|running_mean|running_var)$", Group.BN),
    (r"^(embedding|numerical)\.(weight|bias)$", Group.EMBEDDING),
    (r"^embedding_tables\.\w+\.weight$", Group.EMBEDDING),  # large shared tables (model.inputs)
    (r"^private_tables\.\w+\.weight$", Group.EMBEDDING_PRIVATE),
    (r"^embedding_s\.weight$", Group.EMBEDDING_SCENARIO),
    (r"^gates\.\w+\.(weight|bias)$", Group.GATE),
    (r"^towers\.\w+\.(layers\.\d+\.linear|head)\.(weight|bias)$", Group.TOWER),
)
_COMPILED = tuple((re.compile(p), g) for p, g in RULES)


class UnknownParameterError(KeyError):
    """A tensor name that no rule of the parameter-group table matches."""


def classify(name: str) -> Group:
    for pattern, group in _COMPILED:
        if pattern.search(name):
            return group
    raise UnknownParameterError(
        f"parameter {name!r} matches no rule of the parameter-group table; add a rule to "
        "msmtrec.federation.groups.RULES rather than letting it default"
    )


@dataclass(frozen=True)
class ParameterGroups:
    """Group → policy for one federation method. Groups absent from ``policies`` are kept."""

    policies: Mapping[Group, Policy]

    def __post_init__(self) -> None:
        if self.policies.get(Group.BN_COUNTER, Policy.KEEP) is not Policy.KEEP:
            raise ValueError("num_batches_tracked is an integer counter and is never aggregated")
        for g in (Group.TASK, Group.EMBEDDING_SCENARIO, Group.EMBEDDING_PRIVATE):
            if self.policies.get(g, Policy.KEEP) is not Policy.KEEP:
                raise ValueError(f"group {g} never leaves the client")

    def policy(self, name: str) -> Policy:
        return self.policies.get(classify(name), Policy.KEEP)

    def sent_names(self, names: Iterable[str]) -> list[str]:
        """Names (in the given order) of the tensors that leave the client."""
        return [n for n in names if self.policy(n) is not Policy.KEEP]

    def by_policy(self, names: Iterable[str]) -> dict[Policy, list[str]]:
        out: dict[Policy, list[str]] = {}
        for n in names:
            out.setdefault(self.policy(n), []).append(n)
        return out

    def check_model(self, state: Mapping[str, torch.Tensor]) -> None:
        """Fail early if any tensor of a model is unclassified."""
        for name in state:
            classify(name)

    def to_dict(self) -> dict[str, str]:
        return {g.value: p.value for g, p in sorted(self.policies.items())}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> ParameterGroups:
        return cls({Group(g): Policy(p) for g, p in d.items()})


def signature(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, tuple]:
    """(shape, dtype) of each named tensor: what a client and the server must agree on."""
    return {n: (tuple(state[n].shape), str(state[n].dtype).removeprefix("torch.")) for n in names}
