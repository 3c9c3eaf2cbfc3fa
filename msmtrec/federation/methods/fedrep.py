"""``fedrep`` (Collins et al., ICML 2021): a shared representation, a local head.

The representation ("body") is the experts, averaged by FedAvg; the "head" is everything that
never leaves the client: gates, towers, every BatchNorm and the embeddings. A round trains the
head alone for ``head_epochs`` epochs with the body frozen, then the body alone for the
round's ``local_epochs`` with the head frozen, and sends the body.

Departures from the paper: the paper's representation is the whole network below a linear
head; here the embeddings and gates are local (they are never shared in this project), so
they count as head. BatchNorm running statistics are updated in both phases (they are
buffers, not trained parameters). Each phase starts a fresh Adam, like every round here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import Group, ParameterGroups, Policy
from msmtrec.federation.methods.hooks import ClientHooks
from msmtrec.federation.methods.registry import Method, register

if TYPE_CHECKING:
    from msmtrec.federation.client import ClientRuntime
    from msmtrec.training.trainer import FitResult


def policies(cfg: FederationConfig) -> ParameterGroups:
    return ParameterGroups({Group.GLOBAL: Policy.FEDAVG, Group.SCENARIO: Policy.FEDAVG})


class FedRepHooks(ClientHooks):
    """Head epochs (body frozen), then body epochs (head frozen)."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.head_epochs = int(cfg.head_epochs or 0)

    def private_epochs(self, runtime: ClientRuntime) -> int:
        # the head epochs train the same model: they shape the body's gradients, so they are
        # private steps too
        body = set(runtime.sent_names)
        has_head = any(n not in body for n, _ in runtime.model.named_parameters())
        head = self.head_epochs if has_head else 0
        return head + runtime.trainer.config.local_epochs

    def train(self, runtime: ClientRuntime, round_number: int, progress: bool) -> FitResult:
        from msmtrec.training.trainer import FitResult

        body = set(runtime.sent_names)
        head = {n for n, _ in runtime.model.named_parameters() if n not in body}
        common = {"progress": progress, "shrink": runtime.shrink}
        fits = []
        if self.head_epochs > 0 and head:
            fits.append(
                runtime.trainer.fit(
                    runtime.splits.train,
                    seed=runtime.round_seed(round_number, "head"),
                    epochs=self.head_epochs,
                    trainable=head,
                    desc=f"{runtime.scenario} r{round_number} head",
                    **common,
                )
            )
        fits.append(
            runtime.trainer.fit(
                runtime.splits.train,
                seed=runtime.round_seed(round_number),
                anchor=runtime.anchor,
                mu=runtime.federation.mu,
                trainable=body,
                desc=f"{runtime.scenario} r{round_number} body",
                **common,
            )
        )
        steps = sum(f.steps for f in fits)
        return FitResult(
            num_samples=fits[-1].num_samples,
            steps=steps,
            # mean task loss over every step of the round, both phases
            loss=sum(f.loss * f.steps for f in fits) / max(steps, 1),
            seconds=sum(f.seconds for f in fits),
        )


METHOD = register(
    Method(
        name="fedrep",
        description="FedRep: experts shared by FedAvg; gates, towers, BatchNorm local; head "
        "epochs then body epochs per round",
        defaults=FederationConfig("fedrep", template="none", mu=0.0, head_epochs=1),
        policies=policies,
        tunable={"head_epochs": (1, 2)},
        client_hooks=FedRepHooks,
    )
)
