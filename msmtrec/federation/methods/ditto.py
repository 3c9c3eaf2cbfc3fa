"""``ditto`` (Li et al., ICML 2021): FedAvg for a global model, plus a personal model per client.

Each round the client trains its copy w of the global model exactly as ``fedavg`` does (that
is what it sends), then trains its personal model v on the same local data with
(λ/2)‖v − w_global‖² over the shared tensors, w_global being the round's θ^start (the global
model it received). The personal model is what the client evaluates and publishes; it lives
only on the client and is saved with the client's local state (names ``ditto.*``).

Departures from the paper: v is a whole model of its own (its embeddings too, which are local
to every client here) and starts from the same seed as w; it takes the round's
``local_epochs`` with a fresh Adam (the paper uses SGD and a separate step count); w's shared
tensors follow this project's FedAvg table (everything but the embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups
from msmtrec.federation.methods.fedavg import fedavg_table
from msmtrec.federation.methods.hooks import ClientHooks
from msmtrec.federation.methods.registry import Method, register

if TYPE_CHECKING:
    import torch

    from msmtrec.federation.client import ClientRuntime
    from msmtrec.model.mmoe import MultiTaskMMoE
    from msmtrec.training.trainer import FitResult, Trainer

PREFIX = "ditto."


def policies(cfg: FederationConfig) -> ParameterGroups:
    return fedavg_table()


class DittoHooks(ClientHooks):
    """Keeps the personal model v next to the federated one."""

    state_prefix = PREFIX

    def __init__(self, cfg: FederationConfig) -> None:
        self.lam = float(cfg.ditto_lambda or 0.0)
        self.personal: MultiTaskMMoE | None = None
        self.personal_trainer: Trainer | None = None

    def attach(self, runtime: ClientRuntime) -> None:
        from msmtrec.model.mmoe import build_model

        model = runtime.model
        self.personal = build_model(model.schema, model.config, runtime.seed)
        self.personal.load_state_dict(model.state_dict())  # v⁰ = w⁰
        # on the runtime's device, in its precision
        self.personal_trainer = runtime.trainer.for_model(self.personal)

    def train(self, runtime: ClientRuntime, round_number: int, progress: bool) -> FitResult:
        fit = super().train(runtime, round_number, progress)  # w: what is sent
        assert self.personal_trainer is not None
        self.personal_trainer.fit(
            runtime.splits.train,
            seed=runtime.round_seed(round_number, "ditto"),
            anchor=runtime.anchor,  # w_global: this round's θ^start
            mu=self.lam,
            progress=progress,
            desc=f"{runtime.scenario} r{round_number} personal",
        )
        return fit

    def evaluated_model(self, runtime: ClientRuntime) -> MultiTaskMMoE:
        assert self.personal is not None
        return self.personal

    def extra_state(self, runtime: ClientRuntime) -> dict[str, torch.Tensor]:
        assert self.personal is not None
        return {PREFIX + n: t.detach().clone() for n, t in self.personal.state_dict().items()}

    def load_extra_state(self, runtime: ClientRuntime, state: Mapping[str, torch.Tensor]) -> None:
        assert self.personal is not None
        if not state:
            raise ValueError("the client state lacks Ditto's personal model (ditto.* tensors)")
        self.personal.load_state_dict(
            {n.removeprefix(PREFIX): t for n, t in state.items()}, strict=True
        )


METHOD = register(
    Method(
        name="ditto",
        description="Ditto: FedAvg global model + a personal model per client pulled to it "
        "by (λ/2)‖v − w_global‖²; the personal model is evaluated",
        defaults=FederationConfig("ditto", template="none", mu=0.0, ditto_lambda=0.1),
        policies=policies,
        tunable={"ditto_lambda": (0.1, 1.0)},
        client_hooks=DittoHooks,
    )
)
