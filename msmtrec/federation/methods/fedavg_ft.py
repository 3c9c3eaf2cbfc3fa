"""``fedavg-ft``: FedAvg, then local fine-tuning of a copy for evaluation and publishing.

The federated model trains and is sent exactly as in ``fedavg``. Whenever the client
evaluates a received model, it fine-tunes a *copy* on its training data for up to
``finetune_epochs`` epochs (all parameters, plain task loss, a fresh Adam) and keeps the
epoch count in 0..finetune_epochs with the best mean validation AUC (the scenario's
validation split, never test; ties keep fewer epochs). That copy is evaluated and published;
the federated copy is never changed by it, so ``finetune_epochs = 0`` is exactly ``fedavg``.
The copy is a function of the received model, the local state and the round, so it is
recomputed after every receive and never saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups
from msmtrec.federation.methods.fedavg import fedavg_table
from msmtrec.federation.methods.hooks import ClientHooks
from msmtrec.federation.methods.registry import Method, register

if TYPE_CHECKING:
    from msmtrec.federation.client import ClientRuntime
    from msmtrec.model.mmoe import MultiTaskMMoE
    from msmtrec.training.trainer import FitResult


def policies(cfg: FederationConfig) -> ParameterGroups:
    return fedavg_table()


class FineTuneHooks(ClientHooks):
    """Fine-tunes a copy of the received model, lazily, once per received payload."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.epochs = int(cfg.finetune_epochs or 0)
        self.tuned: MultiTaskMMoE | None = None
        self.chosen_epochs: int | None = None  # the validation-selected count, for reports

    def after_receive(self, runtime: ClientRuntime) -> None:
        self.tuned = None

    def train(self, runtime: ClientRuntime, round_number: int, progress: bool) -> FitResult:
        self.tuned = None
        return super().train(runtime, round_number, progress)

    def evaluated_model(self, runtime: ClientRuntime) -> MultiTaskMMoE:
        if self.epochs == 0:
            return runtime.model
        if self.tuned is None:
            self.tuned = self._fine_tune(runtime)
        return self.tuned

    def _fine_tune(self, runtime: ClientRuntime) -> MultiTaskMMoE:
        from msmtrec.model.mmoe import build_model
        from msmtrec.training.metrics import mean_auc

        model = runtime.model
        copy = build_model(model.schema, model.config, runtime.seed)
        copy.load_state_dict(model.state_dict())
        trainer = runtime.trainer.for_model(copy)  # the runtime's device and precision
        completed = runtime.completed_rounds or 0

        def score() -> float:
            auc = mean_auc({runtime.scenario: trainer.evaluate(runtime.splits.valid)})
            return float("-inf") if auc is None else auc

        best_score, best_epochs = score(), 0
        best_state = {n: t.clone() for n, t in copy.state_dict().items()}
        for epoch in range(1, self.epochs + 1):
            trainer.fit(
                runtime.splits.train,
                seed=runtime.round_seed(completed, f"finetune/{epoch}"),
                epochs=1,
                desc=f"{runtime.scenario} fine-tune {epoch}",
            )
            current = score()
            if current > best_score:
                best_score, best_epochs = current, epoch
                best_state = {n: t.clone() for n, t in copy.state_dict().items()}
        copy.load_state_dict(best_state)
        self.chosen_epochs = best_epochs
        return copy


METHOD = register(
    Method(
        name="fedavg-ft",
        description="FedAvg, then each client fine-tunes a copy for up to finetune_epochs "
        "(chosen on validation); the fine-tuned copy is evaluated",
        defaults=FederationConfig("fedavg-ft", template="none", mu=0.0, finetune_epochs=1),
        policies=policies,
        tunable={"finetune_epochs": (1, 2)},
        client_hooks=FineTuneHooks,
    )
)
