"""``central``: one MMoE on the pooled training data of every scenario (a non-private
reference; simulation only)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups
from msmtrec.federation.methods.registry import Method, PooledRun, register

if TYPE_CHECKING:
    from msmtrec.data.dataset import ScenarioData, ScenarioSplits
    from msmtrec.model.config import ModelConfig
    from msmtrec.training.history import Log, RoundRecord


def policies(cfg: FederationConfig) -> ParameterGroups:
    return ParameterGroups({})  # nothing is federated


def run_central(
    config: PooledRun,
    fed: FederationConfig,
    model_cfg: ModelConfig,
    splits: dict[str, ScenarioSplits],
    log: Log,
) -> list[RoundRecord]:
    """One MMoE trained on the pooled training data; each "round" is one pass of local
    epochs, evaluated on every scenario's own validation and test data."""
    from msmtrec.data.dataset import ScenarioData
    from msmtrec.model.mmoe import build_model

    schema = next(iter(splits.values())).schema
    model = build_model(schema, model_cfg, config.seed)
    pooled = ScenarioData.concat([sp.train for _, sp in sorted(splits.items())])
    valid = {s: sp.valid for s, sp in sorted(splits.items())}
    test = {s: sp.test for s, sp in sorted(splits.items())}
    return pooled_rounds("central", config, model, pooled, valid, test, log)


def pooled_rounds(
    label: str,
    config: PooledRun,
    model: Any,
    pooled: ScenarioData,
    valid_data: dict[str, ScenarioData],
    test_data: dict[str, ScenarioData],
    log: Log,
) -> list[RoundRecord]:
    """The loop of every pooled reference: train ``model`` on ``pooled`` for each round
    (seeded by ``label``), then evaluate it on each scenario's own validation and test data."""
    from msmtrec.device import resolve_device
    from msmtrec.federation.client import round_seed
    from msmtrec.training.history import RoundRecord, round_line
    from msmtrec.training.metrics import mean_auc
    from msmtrec.training.trainer import Trainer

    model = model.to(resolve_device(config.device))
    trainer = Trainer(model, config.train, precision=config.precision)
    history = []
    for r in range(1, config.rounds + 1):
        start = time.perf_counter()
        fit = trainer.fit(
            pooled,
            seed=round_seed(config.seed, label, r),
            progress=config.progress,
            desc=f"{label} r{r}",
        )
        valid = {s: trainer.evaluate(d) for s, d in valid_data.items()}
        test = {s: trainer.evaluate(d) for s, d in test_data.items()}
        rec = RoundRecord(
            r,
            time.perf_counter() - start,
            {"pooled": fit.loss},
            valid,
            test,
            mean_auc(valid),
            mean_auc(test),
        )
        history.append(rec)
        log(round_line(rec, config.rounds, model.tasks))
    return history


METHOD = register(
    Method(
        name="central",
        description="one MMoE on the pooled data of all scenarios (non-private reference)",
        defaults=FederationConfig("central", template="none", mu=0.0),
        policies=policies,
        networked=False,
        pooled_runner=run_central,
    )
)
