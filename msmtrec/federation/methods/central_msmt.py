"""``central-msmt``: pooled data of every scenario, but a scenario-aware model (a non-private
reference; simulation only).

One :class:`~msmtrec.model.scenario_mmoe.ScenarioAwareMMoE` (shared experts, gates that also
read a learned scenario embedding, one tower per scenario × task) is trained on the shuffled
union of every scenario's training data; each "round" is one pass of ``local_epochs``, after
which the model is evaluated on each scenario's own validation and test data. This is what a
multi-scenario multi-task model can do when privacy is not a constraint, the upper reference
for the federated methods (plain ``central`` ignores the scenario).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.methods.central import policies, pooled_rounds
from msmtrec.federation.methods.registry import Method, PooledRun, register

if TYPE_CHECKING:
    from msmtrec.data.dataset import ScenarioSplits
    from msmtrec.model.config import ModelConfig
    from msmtrec.training.history import Log, RoundRecord


def run_central_msmt(
    config: PooledRun,
    fed: FederationConfig,
    model_cfg: ModelConfig,
    splits: dict[str, ScenarioSplits],
    log: Log,
) -> list[RoundRecord]:
    from msmtrec.data.dataset import ScenarioData
    from msmtrec.model.scenario_mmoe import build_scenario_model, with_scenario

    names = tuple(sorted(splits))
    schema = splits[names[0]].schema
    model = build_scenario_model(schema, model_cfg, names, config.seed)
    pooled = ScenarioData.concat([with_scenario(splits[s].train, i) for i, s in enumerate(names)])
    valid = {s: with_scenario(splits[s].valid, i) for i, s in enumerate(names)}
    test = {s: with_scenario(splits[s].test, i) for i, s in enumerate(names)}
    return pooled_rounds("central-msmt", config, model, pooled, valid, test, log)


METHOD = register(
    Method(
        name="central-msmt",
        description="one scenario-aware MMoE (scenario embedding in the gates, towers per "
        "scenario) on the pooled data of all scenarios (non-private reference)",
        defaults=FederationConfig("central-msmt", template="none", mu=0.0),
        policies=policies,
        networked=False,
        pooled_runner=run_central_msmt,
    )
)
