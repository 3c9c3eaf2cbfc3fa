"""One scenario's side of a federation, shared by the simulation and the gRPC client.

It owns the scenario's model and data, receives θ^start from the server, trains a round with
the regularizer anchored at θ^start, and returns θ^end of the tensors the parameter-group
table lets leave the client. Everything else (embeddings, gates, W_T, BatchNorm) stays here.

What a round trains, which model is evaluated and published, and any extra local state are
the method's (:class:`~msmtrec.federation.methods.hooks.ClientHooks`, from the method
registry), so every method behaves identically in the simulation and over the network.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from msmtrec.data.dataset import ScenarioSplits
from msmtrec.device import host_tensors, resolve_device
from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import Group, classify, signature
from msmtrec.federation.methods import get_method
from msmtrec.federation.methods.hooks import ClientHooks
from msmtrec.federation.strategy import ClientUpdate, Tensors
from msmtrec.model.config import ModelConfig
from msmtrec.model.mmoe import MultiTaskMMoE, build_model
from msmtrec.training.config import PrivacyConfig

if TYPE_CHECKING:
    from msmtrec.training.privacy import PrivateTraining
from msmtrec.training.metrics import TaskMetrics
from msmtrec.training.trainer import FitResult, TrainConfig, Trainer

TrainerFactory = Callable[[MultiTaskMMoE, TrainConfig | None, str], Trainer]


def _plain_trainer(model: MultiTaskMMoE, config: TrainConfig | None, precision: str) -> Trainer:
    return Trainer(model, config, precision=precision)


def round_seed(seed: int, scenario: str, round_number: int) -> int:
    """A seed per (federation seed, scenario, round) that any process derives identically."""
    return zlib.crc32(f"{seed}/{scenario}/{round_number}".encode())


@dataclass
class RoundReport:
    round: int
    fit: FitResult
    valid: dict[str, TaskMetrics] = field(default_factory=dict)
    test: dict[str, TaskMetrics] = field(default_factory=dict)


class ClientRuntime:
    """A scenario client: model + data + trainer + what crosses the wire."""

    def __init__(
        self,
        scenario: str,
        splits: ScenarioSplits,
        model_config: ModelConfig,
        federation: FederationConfig,
        train_config: TrainConfig | None = None,
        seed: int = 0,
        model: MultiTaskMMoE | None = None,
        privacy: PrivacyConfig | None = None,
        planned_rounds: int | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        trainer_factory: TrainerFactory | None = None,
    ) -> None:
        """``privacy``: train with DP-SGD, the budget planned over ``planned_rounds`` (every
        round this client plans to join); its noise seed is this client's own secret unless
        the configuration sets one (docs/PRIVACY.md). ``device``: where the model trains
        (DP-SGD included); ``precision`` bf16 is refused with privacy (fp32 only).
        ``trainer_factory(model, train_config, precision)``: the trainer to use instead of
        :class:`Trainer` (e.g. :class:`~msmtrec.training.distributed.DistributedTrainer`, a
        round spread over a torchrun job's replicas); methods' extra models get theirs
        through ``Trainer.for_model``."""
        if privacy is not None and privacy.enabled and precision != "fp32":
            raise ValueError(
                f"precision {precision!r} with differential privacy (dp_epsilon / "
                "dp_noise_multiplier): private training runs in fp32 only; use precision fp32"
            )
        self.scenario = scenario
        self.splits = splits
        self.federation = federation
        self.seed = seed
        self.device = resolve_device(device)
        # Same seed everywhere → every client and the server share the initial shared tensors.
        model = model or build_model(splits.schema, model_config, seed)
        self.model = model.to(self.device)
        make_trainer = trainer_factory or _plain_trainer
        self.trainer = make_trainer(self.model, train_config, precision)
        self.groups = federation.parameter_groups()
        state = self.model.state_dict()
        self.groups.check_model(state)
        self.sent_names = self.groups.sent_names(state)
        self.anchor: Tensors | None = None
        lam = federation.template_l2
        self.shrink = {
            n: lam
            for n in state
            if lam > 0 and classify(n) in (Group.SCENARIO, Group.TASK, Group.EMBEDDING_SCENARIO)
        }
        # completed rounds of the payload last received (None: not told, e.g. by a caller
        # that predates it); methods that train at evaluation time seed from it
        self.completed_rounds: int | None = None
        factory = get_method(federation.method).client_hooks
        self.hooks: ClientHooks = factory(federation) if factory is not None else ClientHooks()
        self.hooks.attach(self)
        self.privacy: PrivateTraining | None = None
        if privacy is not None and privacy.enabled:
            self.privacy = self._private_training(privacy, planned_rounds)
            self.trainer.privacy = self.privacy

    def _private_training(
        self, config: PrivacyConfig, planned_rounds: int | None
    ) -> PrivateTraining:
        from msmtrec.training.privacy import PrivateTraining, steps_per_epoch

        if planned_rounds is None or planned_rounds < 1:
            raise ValueError("private training needs the number of rounds the client plans")
        n = len(self.splits.train)
        per_epoch = steps_per_epoch(n, self.trainer.config.batch_size)
        steps = planned_rounds * self.private_steps_per_round(per_epoch)
        seed = None
        if config.noise_seed is not None:  # one stream per scenario from the given seed
            seed = zlib.crc32(f"{config.noise_seed}/{self.scenario}/dp-noise".encode())
        return PrivateTraining(config, n, self.trainer.config.batch_size, steps, seed=seed)

    def private_steps_per_round(self, steps_per_epoch: int) -> int:
        """Private steps one round takes on the model whose shared tensors are sent."""
        return self.hooks.private_epochs(self) * steps_per_epoch

    def round_seed(self, round_number: int, stream: str = "") -> int:
        """The seed of this client's ``round_number``; ``stream`` names a further random
        stream of the same round (e.g. a personal model's), "" is the round's training."""
        scenario = f"{self.scenario}/{stream}" if stream else self.scenario
        return round_seed(self.seed, scenario, round_number)

    def signature(self) -> dict[str, tuple]:
        return signature(self.model.state_dict(), self.sent_names)

    def shared_state(self) -> Tensors:
        """θ^end of the tensors that leave the client: CPU float32 copies (the wire form)."""
        state = self.model.state_dict()
        return host_tensors({n: state[n] for n in self.sent_names})

    def receive(
        self, payload: Mapping[str, torch.Tensor], completed_rounds: int | None = None
    ) -> None:
        """Load the server's θ^start for this client; it also anchors the regularizer.
        ``completed_rounds``: how many rounds produced it (0 for the initial model)."""
        if set(payload) != set(self.sent_names):
            missing = sorted(set(self.sent_names) - set(payload))
            extra = sorted(set(payload) - set(self.sent_names))
            raise ValueError(f"payload names differ: missing {missing[:5]}, unexpected {extra[:5]}")
        state = self.model.state_dict()
        with torch.no_grad():
            for n, t in payload.items():
                if state[n].shape != t.shape:
                    raise ValueError(f"{n}: shape {tuple(t.shape)} != {tuple(state[n].shape)}")
                state[n].copy_(t)
        self.anchor = {n: t.detach().to(self.device, copy=True) for n, t in payload.items()}
        self.completed_rounds = completed_rounds
        self.hooks.after_receive(self)

    def train_round(
        self, round_number: int, progress: bool = False
    ) -> tuple[ClientUpdate, FitResult]:
        """One local round. With a privacy budget the round is refused
        (:class:`~msmtrec.training.privacy.PrivacyBudgetExceeded`) before any training when
        its steps would spend more than the budget."""
        if self.privacy is not None:
            n = len(self.splits.train)
            self.privacy.check(
                self.private_steps_per_round(self.privacy.steps_per_epoch(n)),
                f"scenario {self.scenario}: round {round_number}",
            )
        fit = self.hooks.train(self, round_number, progress)
        update = ClientUpdate(
            client_id=self.scenario,
            num_samples=fit.num_samples,
            params=self.shared_state(),
            metrics=self.round_metrics(fit),
        )
        return update, fit

    def round_metrics(self, fit: FitResult) -> dict[str, float]:
        """What a round submission says about the local training. A private client leaves
        out the training loss, a non-private function of its rows, and adds ε spent so far."""
        metrics = {"train_loss": fit.loss, "train_seconds": fit.seconds}
        if self.privacy is not None:
            del metrics["train_loss"]
            metrics.update(self.privacy.metrics())
        return metrics

    def privacy_summary(self) -> dict[str, Any] | None:
        """The privacy record published with every model (None without DP)."""
        return self.privacy.summary() if self.privacy is not None else None

    def evaluate(self, split: str = "valid") -> dict[str, TaskMetrics]:
        data = {"valid": self.splits.valid, "test": self.splits.test, "train": self.splits.train}
        if split not in data:
            raise ValueError(f"unknown split {split!r}")
        model = self.evaluated_model()
        trainer = self.trainer if model is self.model else self.trainer.for_model(model)
        return trainer.evaluate(data[split])

    def evaluated_model(self) -> MultiTaskMMoE:
        """The model this client evaluates and publishes: the federated one, unless the
        method keeps a personal or fine-tuned model for that (Ditto, fedavg-ft)."""
        return self.hooks.evaluated_model(self)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The model's state_dict plus the method's extra local state (prefixed names), as
        CPU float32 copies whatever the device (what a local checkpoint holds)."""
        state = dict(self.model.state_dict())
        state.update(self.hooks.extra_state(self))
        return host_tensors(state)

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        prefix = self.hooks.state_prefix
        extra = {n: t for n, t in state.items() if prefix and n.startswith(prefix)}
        own = {n: t for n, t in state.items() if n not in extra}
        self.model.load_state_dict(own, strict=True)
        self.hooks.load_extra_state(self, extra)
