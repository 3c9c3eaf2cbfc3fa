"""Federation configuration: what a method's server and clients do, as one frozen record.

A method is a name registered in :mod:`msmtrec.federation.methods` that resolves to a
:class:`FederationConfig` (server behaviour, the local regularizer, method knobs) plus the model
template it needs. The policy table of each method (what leaves a client) is the registered
method's; :meth:`FederationConfig.parameter_groups` looks it up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from msmtrec.federation.groups import ParameterGroups
from msmtrec.model.config import ModelConfig, preset

ConflictMode = Literal["ca", "pcgrad", "none"]
CaRescale = Literal["alpha", "alpha_sq", "none"]
PersonalForm = Literal["add", "interp"]
HyperGrad = Literal["raw", "cosine"]
CaScale = Literal["auto", "exact", "sketch"]
CA_SCALES = ("auto", "exact", "sketch")
# ``ca_scale="auto"`` computes the conflict-averse step exactly up to this many clients.
CA_EXACT_MAX_CLIENTS = 8

# The method every entry point runs unless told otherwise (simulate, the aggregator, up, the
# spec, the simulation's configuration): named here once.
DEFAULT_METHOD = "pfmsmtrec"

# Knobs of single methods. None means "this method has no such knob": a configuration
# without them serialises exactly as before they existed (checkpoints and spec digests of
# the older methods are unchanged), and setting one on a method that lacks it is an error.
METHOD_KNOBS = ("ditto_lambda", "finetune_epochs", "head_epochs")
# Fields added after checkpoints existed, with the value every older configuration had.
_FORM_DEFAULTS: dict[str, Any] = {
    "personal_form": "add",
    "hyper_grad": "raw",
    "attention_temperature": None,
    "embedding_template": False,
    "clients_per_round": None,
    "client_fraction": None,
    "ca_scale": "auto",
}


def __getattr__(name: str) -> Any:
    """``METHODS``, ``BASE_METHODS`` and ``ABLATIONS`` come from the method registry (read
    lazily: the registry's modules import this one)."""
    from msmtrec.federation.methods import get_method, method_names

    if name == "METHODS":
        return method_names()
    if name == "BASE_METHODS":
        return tuple(n for n in method_names() if get_method(n).family == n)
    if name == "ABLATIONS":
        return {
            n: get_method(n).description
            for n in method_names()
            if get_method(n).family == "pfmsmtrec" and n != "pfmsmtrec"
        }
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class FederationConfig:
    """Server-side switches and the local regularizer of one federation method.

    ``mu``: weight of (μ/2)‖θ_shared − θ_start‖² in the local loss (the personalization
    regularizer for pfmsmtrec, the proximal term for fedprox). ``conflict``: ca | pcgrad |
    none. ``personalize``: learn a_c, b_c by hyper-gradient (False → fixed at 1).
    ``template_l2``: (λ/2)‖·‖² on the expert template's specific parts W_S and W_T, which
    shrinks each scenario's experts towards the shared W_G (regularized multi-task learning);
    without it the additive split is pure over-parametrisation.
    """

    method: str = DEFAULT_METHOD
    template: str = "additive3"
    mu: float = 1e-3
    conflict: ConflictMode = "ca"
    ca_alpha: float = 0.4
    ca_rescale: CaRescale = "alpha"
    # How the conflict-averse step scales with clients (msmtrec.federation.blocks):
    # ``exact`` — the full Gram matrix of the deltas (O(C²P)) and scipy's SLSQP (O(C³) per
    # iteration); ``sketch`` — the Gram matrix of sign-folded deltas (O(C·P), off-diagonal
    # entries within ~0.4 %) and a first-order simplex solver (O(C²)); ``auto`` — exact up
    # to CA_EXACT_MAX_CLIENTS clients in a round, sketch above (every federation of up to 8
    # clients computes exactly what it did before this switch existed).
    ca_scale: CaScale = "auto"
    personalize: bool = True
    tower_aggregation: bool = True
    fedbn: bool = True
    init_weight: float = 0.1
    hyper_lr: float = 0.01
    hyper_momentum: float = 0.9
    hyper_weight_decay: float = 1e-4
    template_l2: float = 0.0
    # Forms of the personalization (docs/METHOD.md, "Personalization forms"): how a client's
    # own delta and the shared update combine, how the hyper-gradient is scaled, and the
    # attention over tower deltas (None: FedHCA²'s scaled dot product).
    personal_form: PersonalForm = "add"
    hyper_grad: HyperGrad = "raw"
    attention_temperature: float | None = None
    # The embedding template (ModelConfig.embedding_template): E_G + numerical projection
    # FedAvg'd, E_S local and shrunk by template_l2 like W_S.
    embedding_template: bool = False
    # Method knobs (METHOD_KNOBS; None: the method has none). ditto_lambda: λ of Ditto's
    # (λ/2)‖v − w_global‖². finetune_epochs: fedavg-ft's most local fine-tuning epochs.
    # head_epochs: FedRep's head-only epochs before the body epochs of a round.
    ditto_lambda: float | None = None
    finetune_epochs: int | None = None
    head_epochs: int | None = None
    # Partial participation (msmtrec.federation.sampling): a number or a fraction of the
    # clients sampled per round, deterministically by seed and round; None: every client.
    clients_per_round: int | None = None
    client_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.ca_scale not in CA_SCALES:
            raise ValueError(
                f"ca_scale must be one of {', '.join(CA_SCALES)}, got {self.ca_scale!r}"
            )
        if self.clients_per_round is not None and self.client_fraction is not None:
            raise ValueError("give clients_per_round or client_fraction, not both")
        k = self.clients_per_round
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"clients_per_round must be an integer >= 1, got {k!r}")
        f = self.client_fraction
        if f is not None and not 0 < f <= 1:
            raise ValueError(f"client_fraction must be in (0, 1], got {f!r}")
        if self.ditto_lambda is not None and not self.ditto_lambda >= 0:
            raise ValueError(f"ditto_lambda must be >= 0, got {self.ditto_lambda!r}")
        for name in ("finetune_epochs", "head_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def parameter_groups(self) -> ParameterGroups:
        """What leaves a client, per group: the registered method family's table."""
        from msmtrec.federation.methods import get_method

        policies = get_method(self.method).policies
        if policies is None:  # a variant's defaults name their family, never themselves
            raise ValueError(f"method {self.method!r} is not a method family")
        return policies(self)

    def to_dict(self) -> dict[str, Any]:
        """Every field, except method knobs the method does not have (None) and forms left
        at their original value (so older checkpoints and spec digests read the same)."""
        d = asdict(self)
        for knob in METHOD_KNOBS:
            if d[knob] is None:
                del d[knob]
        for name, original in _FORM_DEFAULTS.items():
            if d[name] == original:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FederationConfig:
        return cls(**d)

    def with_(self, **changes: Any) -> FederationConfig:
        return replace(self, **changes)


def resolve_experiment(
    method: str,
    preset_name: str,
    federation_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> tuple[FederationConfig, ModelConfig]:
    """Method + preset + overrides → (federation, model) configuration. The model takes the
    method's template unless a model override names one. The simulation and the networked
    federation both resolve through here, so they always build the same model."""
    fed = resolve_method(method, **(federation_overrides or {}))
    model = preset(
        preset_name,
        **{
            "template": fed.template,
            "embedding_template": fed.embedding_template,
            **(model_overrides or {}),
        },
    )
    return fed, model


# Knobs a user may set over a method's defaults (flags of `simulate`, aggregator settings).
FEDERATION_KNOBS = (
    "mu",
    "conflict",
    "ca_alpha",
    "ca_rescale",
    "template",
    "template_l2",
    "personal_form",
    "hyper_grad",
    "attention_temperature",
    "embedding_template",
    "init_weight",
    "hyper_lr",
    "clients_per_round",
    "client_fraction",
    *METHOD_KNOBS,
)
MODEL_KNOBS = ("template", "ctcvr_head")


def experiment_overrides(source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(federation, model) overrides from the knobs ``source`` sets (attributes not None):
    the one mapping from command-line flags or service settings to :func:`resolve_experiment`."""

    def pick(names: tuple[str, ...]) -> dict[str, Any]:
        values = {n: getattr(source, n, None) for n in names}
        return {n: v for n, v in values.items() if v is not None}

    return pick(FEDERATION_KNOBS), pick(MODEL_KNOBS)


class ResolvesExperiment:
    """Mixed into the configurations that name an experiment (the simulation's and the
    network's spec, both with ``method``, ``preset``, ``federation_overrides`` and
    ``model_overrides``), so both resolve it through :func:`resolve_experiment`."""

    def resolved(self) -> tuple[FederationConfig, ModelConfig]:
        return resolve_experiment(
            self.method,  # type: ignore[attr-defined]
            self.preset,  # type: ignore[attr-defined]
            self.federation_overrides,  # type: ignore[attr-defined]
            self.model_overrides,  # type: ignore[attr-defined]
        )

    def federation(self) -> FederationConfig:
        return self.resolved()[0]

    def model_config(self) -> ModelConfig:
        return self.resolved()[1]


def resolve_method(name: str, **overrides: Any) -> FederationConfig:
    """Method name (any registered method: a baseline, pfmsmtrec or one of its ablations) →
    its configuration, with ``overrides`` (None values ignored) applied. An override that
    names no field, or a method knob the method does not have, is a ValueError naming it."""
    from msmtrec.federation.methods import get_method

    cfg = get_method(name).defaults
    changes = {k: v for k, v in overrides.items() if v is not None}
    known = {f.name for f in fields(FederationConfig)} - {"method"}
    for key in changes:
        if key not in known:
            raise ValueError(
                f"unknown federation override {key!r}; known: {', '.join(sorted(known))}"
            )
        if key in METHOD_KNOBS and getattr(cfg, key) is None:
            raise ValueError(
                f"{key} is not a knob of method {name!r} (its knobs: "
                f"{', '.join(k for k in METHOD_KNOBS if getattr(cfg, k) is not None) or 'none'})"
            )
    return cfg.with_(**changes)
