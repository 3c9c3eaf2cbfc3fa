"""The experiment protocol a networked federation runs, shared by server and clients.

The aggregator owns it and hands it to every client (as JSON) before the client builds its
model, so that both sides build exactly the model ``msmtrec simulate`` builds for the same
settings: same preset and template, same seed (hence the same initial shared tensors and the
same local parts), same local training settings and the same validation hold-out. A digest
of it binds a client's join and a checkpoint to the configuration that produced them.

Pure data (no sockets): :meth:`from_simulation` / :meth:`to_simulation` map it to and from
the in-process simulation's configuration, which is how equivalence is tested.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.federation.config import DEFAULT_METHOD, ResolvesExperiment
from msmtrec.training.config import TrainConfig

if TYPE_CHECKING:  # settings models read the spec; keep torch out of their import
    import torch

    from msmtrec.simulation import SimulationConfig

SPEC_VERSION = 1


@dataclass(frozen=True)
class FederationSpec(ResolvesExperiment):
    """Method, model preset and overrides, seed, rounds, local training, validation split."""

    method: str = DEFAULT_METHOD
    preset: str = "small"
    seed: int = 0
    rounds: int = 10
    valid_fraction: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    federation_overrides: dict[str, Any] = field(default_factory=dict)
    schema: FeatureSchema = ALIEXPRESS

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The full initial state_dict every participant derives from the seed."""
        from msmtrec.model.mmoe import build_model

        return build_model(self.schema, self.model_config(), self.seed).state_dict()

    # ------------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "method": self.method,
            "preset": self.preset,
            "seed": self.seed,
            "rounds": self.rounds,
            "valid_fraction": self.valid_fraction,
            "train": asdict(self.train),
            "model_overrides": dict(self.model_overrides),
            "federation_overrides": dict(self.federation_overrides),
            "schema": self.schema.to_dict(),
            # resolved, for readers that do not want to resolve presets themselves
            "model": self.model_config().to_dict(),
            "federation": self.federation().to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederationSpec:
        if d.get("version") != SPEC_VERSION:
            raise ValueError(f"unsupported federation spec version {d.get('version')!r}")
        train_keys = {f.name for f in fields(TrainConfig)}
        return cls(
            method=str(d["method"]),
            preset=str(d["preset"]),
            seed=int(d["seed"]),
            rounds=int(d["rounds"]),
            valid_fraction=float(d["valid_fraction"]),
            train=TrainConfig(**{k: v for k, v in d["train"].items() if k in train_keys}),
            model_overrides=dict(d.get("model_overrides", {})),
            federation_overrides=dict(d.get("federation_overrides", {})),
            schema=FeatureSchema.from_dict(d["schema"]),
        )

    @classmethod
    def from_json(cls, text: str) -> FederationSpec:
        return cls.from_dict(json.loads(text))

    def digest(self, *, include_rounds: bool = False) -> str:
        """sha256 of what determines the parameters. The number of rounds is left out by
        default: raising it and restarting continues the same federation."""
        d = self.to_dict()
        if not include_rounds:
            d.pop("rounds")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    # --------------------------------------------------------------------------- simulation
    def to_simulation(
        self, data_dir: Path, scenarios: tuple[str, ...] | None = None, **local: Any
    ) -> SimulationConfig:
        """The in-process simulation with the same protocol. ``local``: the run's own
        settings that are not protocol (progress, device, precision, privacy, lazy_test)."""
        from msmtrec.simulation import SimulationConfig

        protocol = {name: getattr(self, name) for name in PROTOCOL_FIELDS}
        protocol["model_overrides"] = dict(self.model_overrides)
        protocol["federation_overrides"] = dict(self.federation_overrides)
        return SimulationConfig(data_dir=data_dir, scenarios=scenarios, **protocol, **local)

    @classmethod
    def from_simulation(cls, config: Any) -> FederationSpec:
        """The protocol of a simulation's configuration (its protocol fields, by name)."""
        protocol = {name: getattr(config, name) for name in PROTOCOL_FIELDS}
        protocol["model_overrides"] = dict(config.model_overrides)
        protocol["federation_overrides"] = dict(config.federation_overrides)
        return cls(**protocol)


# The fields a simulation's configuration shares with the spec, by the same names: the
# bridge in both directions copies exactly these (tests/unit/test_experiment.py checks that
# SimulationConfig has each, with the same default).
PROTOCOL_FIELDS = (
    "method",
    "preset",
    "seed",
    "rounds",
    "valid_fraction",
    "train",
    "model_overrides",
    "federation_overrides",
    "schema",
)


def dataset_spec_differences(schema: FeatureSchema, client_json: str) -> list[str]:
    """What differs between the federation's dataset spec and the one a client joins with
    (``FeatureSchema.to_dict`` as JSON, the client's ``--spec``): one entry per key, naming
    both values. Empty: the same spec, or a client that sent none (older clients)."""
    if not client_json:
        return []
    try:
        theirs = FeatureSchema.from_dict(json.loads(client_json))
    except (ValueError, KeyError, TypeError) as exc:
        return [f"the client's dataset spec is not a valid schema: {exc}"]
    return schema.differences(theirs)
