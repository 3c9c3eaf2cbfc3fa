"""The one experiment settings model: what ``simulate``, the aggregator, the clients and ``up``
all mean by "this experiment".

Why one model: the protocol knobs (method, preset, seed, rounds, local training, method
knobs, participation) and the privacy knobs used to be declared once per entry point and
bridged by hand, so a knob added to ``simulate`` could be missing from the aggregator and
fail only at run time. Here each knob is declared once, as a pydantic field with its
default, its check and its description; the service settings models inherit the fields
(so their flags, environment variables, config-file keys and documentation tables follow
from them), ``simulate`` and ``up`` validate their flags through the same model, and
:func:`train_config` is the one mapping to :class:`~msmtrec.training.config.TrainConfig`.

Groups:

* :class:`ProtocolSettings`: what every participant must agree on (the aggregator serves it
  to its clients as a :class:`~msmtrec.spec.FederationSpec`, whose digest binds joins and
  checkpoints). It maps to that spec (:meth:`ProtocolSettings.spec`) and to the in-process
  :class:`~msmtrec.simulation.SimulationConfig` (:meth:`ProtocolSettings.simulation_config`).
* :class:`PrivacySettings`: record-level differential privacy of a client's own training
  (each client's choice: it protects the client's rows), → :class:`PrivacyConfig`.
* :class:`ExperimentSettings`: both, what ``simulate`` and ``up`` take.

Pure data: importing this module loads neither torch nor any service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from msmtrec.federation.config import DEFAULT_METHOD, experiment_overrides
from msmtrec.model.config import PRESETS
from msmtrec.training.config import PrivacyConfig, TrainConfig

if TYPE_CHECKING:
    from msmtrec.data.schema import FeatureSchema
    from msmtrec.simulation import SimulationConfig
    from msmtrec.spec import FederationSpec

DEFAULT_DATASET = "aliexpress"
_TRAIN = TrainConfig()


def _train_default(name: str) -> Any:
    return getattr(_TRAIN, name)


class _FromValues(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_values(cls, source: Any) -> Self:
        """The settings that ``source`` (an argparse namespace or any object) sets: every
        attribute named like a field and not None; the others keep their defaults."""
        values = {
            name: getattr(source, name)
            for name in cls.model_fields
            if getattr(source, name, None) is not None
        }
        return cls.model_validate(values)


class ProtocolSettings(_FromValues):
    """The experiment protocol: method and its knobs, model preset, seed, rounds, local
    training, validation hold-out, participation. Unset (None) knobs take the method's
    default."""

    method: str = Field(
        DEFAULT_METHOD,
        description="federation method or baseline (docs/METHOD.md; the aggregator refuses "
        "the pooled references)",
    )
    preset: str = Field("small", description=f"model preset: {', '.join(sorted(PRESETS))}")
    seed: int = Field(0, description="seed of the initial model and of every local round")
    rounds: int = Field(10, ge=1, description="rounds to run (may be raised on a restart)")
    valid_fraction: float = Field(
        0.1, ge=0, lt=1, description="tail of train each client holds out for model selection"
    )
    local_epochs: int = Field(
        _train_default("local_epochs"), ge=1, description="local epochs per round"
    )
    lr: float = Field(_train_default("lr"), gt=0, description="client Adam learning rate")
    weight_decay: float = Field(
        _train_default("weight_decay"), ge=0, description="client weight decay"
    )
    batch_size: int = Field(_train_default("batch_size"), ge=1, description="client batch size")
    dataset: str = Field(
        DEFAULT_DATASET,
        description="dataset spec the data follows: a built-in name (aliexpress, tenrec) or "
        "a TOML/YAML spec file (its columns, embedding tables, tasks)",
        json_schema_extra={"flag": "--spec", "metavar": "NAME|PATH"},
    )

    # ------------------------------------------------------- method knobs (None: default)
    template: Literal["additive3", "two_part", "none"] | None = Field(
        None, description="override the method's parameter template"
    )
    ctcvr_head: Literal["direct", "esmm"] | None = Field(None, description="CTCVR head")
    mu: float | None = Field(None, description="regularizer weight μ (method default)")
    conflict: Literal["ca", "pcgrad", "none"] | None = Field(
        None, description="conflict coordination of expert updates (method default)"
    )
    ca_alpha: float | None = Field(None, description="conflict-averse α (method default)")
    ca_rescale: Literal["alpha", "alpha_sq", "none"] | None = Field(
        None, description="rescaling of the conflict-averse update (method default)"
    )
    template_l2: float | None = Field(
        None, description="λ of (λ/2)‖W_S, W_T‖², shrinking experts to W_G (method default)"
    )
    personal_form: Literal["add", "interp"] | None = Field(
        None,
        description="personalized aggregation: interp mixes the own delta and the shared "
        "update by a; add puts a times the shared update on top (method default)",
    )
    hyper_grad: Literal["raw", "cosine"] | None = Field(
        None, description="hyper-gradient of a, b: raw or cosine-normalised (method default)"
    )
    attention_temperature: float | None = Field(
        None,
        description="τ of the tower attention softmax(cos/τ); unset: FedHCA²'s scaled dot product",
    )
    embedding_template: bool | None = Field(
        None,
        description="pfmsmtrec: split the input layer into a shared E_G (averaged, so the "
        "shared embedding tables leave the client; private tables never do) and a local E_S "
        "(method default: off, embeddings stay local)",
    )
    init_weight: float | None = Field(None, description="initial a, b (method default)")
    hyper_lr: float | None = Field(None, description="learning rate of a, b (method default)")
    ditto_lambda: float | None = Field(
        None, description="ditto: λ of (λ/2)‖v − w_global‖² on the personal model (0.1)"
    )
    finetune_epochs: int | None = Field(
        None, description="fedavg-ft: most fine-tuning epochs, chosen on validation (1)"
    )
    head_epochs: int | None = Field(
        None, description="fedrep: head-only epochs before the body epochs of a round (1)"
    )

    # ------------------------------------------------------------------ participation
    clients_per_round: int | None = Field(
        None,
        ge=1,
        description="partial participation: clients sampled per round, deterministically by "
        "seed and round (default: all)",
    )
    client_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="partial participation: the fraction of the clients sampled per round "
        "(rounded up); give this or clients_per_round",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from msmtrec.federation.methods import method_names

        names = method_names()
        if v not in names:
            raise ValueError(f"unknown method {v!r}; choose one of: {', '.join(names)}")
        return v

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; choose one of: {', '.join(sorted(PRESETS))}")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        dataset_schema(v)  # a spec that does not load is refused here, naming the key
        return v

    def schema(self) -> FeatureSchema:
        """The feature schema of the dataset spec (``--spec``)."""
        return dataset_schema(self.dataset)

    # ------------------------------------------------------------------------ mappings
    def train_config(self) -> TrainConfig:
        return train_config(self)

    def overrides(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(federation, model) overrides of the knobs that are set."""
        return experiment_overrides(self)

    def spec(self) -> FederationSpec:
        """The protocol the aggregator serves its clients (its digest binds joins and
        checkpoints)."""
        from msmtrec.spec import FederationSpec

        fed_overrides, model_overrides = self.overrides()
        return FederationSpec(
            method=self.method,
            preset=self.preset,
            seed=self.seed,
            rounds=self.rounds,
            valid_fraction=self.valid_fraction,
            train=self.train_config(),
            model_overrides=model_overrides,
            federation_overrides=fed_overrides,
            schema=self.schema(),
        )

    def simulation_config(self, data_dir: Path, **local: Any) -> SimulationConfig:
        """The in-process simulation of this protocol over ``data_dir``. ``local``: the
        run's own settings that are not protocol (scenarios, progress, device, precision,
        privacy, lazy_test)."""
        return self.spec().to_simulation(data_dir, **local)


class PrivacySettings(_FromValues):
    """Record-level differential privacy of a client's training (docs/PRIVACY.md)."""

    dp_epsilon: float | None = Field(
        None,
        description="differential privacy: ε budget over all rounds of the federation "
        "(unset: no DP); a round that would exceed it is refused",
    )
    dp_delta: float | None = Field(None, description="DP δ (default 1/training rows)")
    dp_max_grad_norm: float | None = Field(
        None, description="DP per-sample gradient clipping bound C (default 1.0)"
    )
    dp_noise_multiplier: float | None = Field(
        None,
        description="DP noise multiplier σ instead of calibrating it to dp-epsilon (with "
        "dp-epsilon too, ε only caps the spending)",
    )
    dp_noise_seed: int | None = Field(
        None,
        description="seed of DP sampling and noise, for reproducible research only (default: "
        "a secret one; whoever knows it can remove the noise)",
    )

    @field_validator(
        "dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_noise_multiplier", "dp_noise_seed",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # compose passes `${MSMTREC_DP_EPSILON:-}`: an empty variable means "not set"
        return None if isinstance(v, str) and not v.strip() else v

    def privacy(self) -> PrivacyConfig | None:
        """The DP configuration these settings describe (None: no DP). A stray δ, C or seed
        without ε or σ is a ValueError naming it."""
        return PrivacyConfig.from_values(
            epsilon=self.dp_epsilon,
            delta=self.dp_delta,
            max_grad_norm=self.dp_max_grad_norm,
            noise_multiplier=self.dp_noise_multiplier,
            noise_seed=self.dp_noise_seed,
        )


PRIVACY_FIELDS = tuple(PrivacySettings.model_fields)
PROTOCOL_FIELDS = tuple(ProtocolSettings.model_fields)


class ExperimentSettings(ProtocolSettings, PrivacySettings):
    """Protocol and privacy: the whole experiment, as ``simulate`` and ``up`` take it."""


def dataset_schema(name_or_path: str) -> FeatureSchema:
    """The schema of a dataset spec (built-in name or TOML/YAML file); a bad spec is a
    ``SpecError`` (a ValueError) naming the file and key."""
    from msmtrec.data.spec_file import load_spec

    return load_spec(name_or_path)


def train_config(settings: ProtocolSettings) -> TrainConfig:
    """The one mapping of the local-training knobs to :class:`TrainConfig`."""
    return TrainConfig(
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size,
        local_epochs=settings.local_epochs,
    )


def field_errors(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as one line per field (``rounds: must be >= 1``);
    any other exception as its message."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
