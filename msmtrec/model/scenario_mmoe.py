"""A scenario-aware MMoE for pooled training over every scenario (the ``central-msmt``
reference): one model, but it knows which scenario a row comes from.

* The experts are shared by all scenarios (the same fused experts as
  :class:`~msmtrec.model.mmoe.MultiTaskMMoE`).
* Each task's gate reads the row's input concatenated with a learned **scenario embedding**,
  so the mixture of experts can differ per scenario.
* Each scenario has its own towers (one per scenario × task); all scenarios' towers start
  from the same initial weights, so any difference between them is learned.

The scenario of each row travels as one extra, last column of the categorical input (its index
in ``scenarios``), so the model keeps the ``model(categorical, numerical)`` call that the
trainer and the evaluation use. :func:`with_scenario` appends it to a split.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import FeatureSchema
from msmtrec.model.config import ModelConfig
from msmtrec.model.inputs import SchemaInputs, task_parent_indices
from msmtrec.model.mmoe import MultiTaskMMoE, TemplatedExperts, Tower, check_heads


class ScenarioAwareMMoE(SchemaInputs):
    """MMoE over pooled rows of several scenarios; returns logits (B, T) in task order."""

    def __init__(self, schema: FeatureSchema, config: ModelConfig, scenarios: Sequence[str]):
        super().__init__()
        if not scenarios:
            raise ValueError("a scenario-aware model needs at least one scenario")
        if len(set(scenarios)) != len(scenarios):
            raise ValueError(f"scenario names repeat: {list(scenarios)}")
        check_heads(schema, config)
        self.schema, self.config = schema, config
        self.scenarios = tuple(scenarios)
        self.tasks = schema.tasks
        self.tower_names = ("ctr", "cvr") if config.ctcvr_head == "esmm" else tuple(schema.tasks)
        self.task_parents = task_parent_indices(schema)
        d = config.embed_dim
        # no embedding template here: the pooled model has no scenario-specific input part
        in_dim = self._build_inputs(schema, config.with_(embedding_template=False))
        self.experts = TemplatedExperts(in_dim, config, len(self.tower_names))
        self.scenario_embedding = nn.Embedding(len(self.scenarios), d)
        self.gates = nn.ModuleDict(
            {t: nn.Linear(in_dim + d, config.num_experts) for t in self.tower_names}
        )
        first = nn.ModuleDict(
            {
                t: Tower(self.experts.out_dim, config.tower_dims, config.dropout)
                for t in self.tower_names
            }
        )
        # keys by index: scenario names need not be valid module names
        self.towers = nn.ModuleDict(
            {f"s{i}": copy.deepcopy(first) for i in range(len(self.scenarios))}
        )

    def scenario_towers(self, scenario: str) -> nn.ModuleDict:
        return self.towers[f"s{self.scenarios.index(scenario)}"]

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        sid = categorical[:, -1].long()
        e = self.embed(categorical[:, :-1], numerical)
        h = self.experts(e)  # (B, K, V, out)
        gate_in = torch.cat((e, self.scenario_embedding(sid)), dim=1)
        groups = [(i, (sid == i).nonzero().squeeze(1)) for i in range(len(self.scenarios))]
        logits = []
        for t, name in enumerate(self.tower_names):
            view = h[:, :, t if h.shape[2] > 1 else 0, :]
            gate = torch.softmax(self.gates[name](gate_in), dim=-1)
            z = torch.einsum("bk,bko->bo", gate, view)
            out = z.new_zeros(z.shape[0])
            for i, idx in groups:
                if len(idx):
                    out = out.index_copy(0, idx, self._tower(self.towers[f"s{i}"][name], z[idx]))
            logits.append(out)
        return torch.stack(MultiTaskMMoE._heads(self, logits), dim=1)

    def _tower(self, tower: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """A scenario's tower on its rows of the batch. BatchNorm cannot normalise one row in
        training: a scenario with a single row in a batch uses the running statistics (and
        no dropout) for it."""
        if not (self.training and len(z) == 1):
            return tower(z)
        tower.eval()
        try:
            return tower(z)
        finally:
            tower.train()


def build_scenario_model(
    schema: FeatureSchema, config: ModelConfig, scenarios: Sequence[str], seed: int
) -> ScenarioAwareMMoE:
    """Initial parameters depend only on ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ScenarioAwareMMoE(schema, config, scenarios)


def with_scenario(data: ScenarioData, index: int) -> ScenarioData:
    """``data`` with the scenario index appended as the last categorical column."""
    column = np.full((len(data), 1), index, dtype=data.categorical.dtype)
    return ScenarioData(
        np.concatenate([data.categorical, column], axis=1), data.numerical, data.labels
    )
