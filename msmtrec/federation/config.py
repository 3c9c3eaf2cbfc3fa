"""Federation methods: the baselines and PF-MSMTrec with its ablation switches (ALGORITHM.md §7).

A method is a name that resolves to a :class:`FederationConfig` (server behaviour and the
local regularizer) plus the model template it needs. The policy table of each method lives in
:meth:`FederationConfig.parameter_groups`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from msmtrec.federation.groups import Group, ParameterGroups, Policy
from msmtrec.model.config import ModelConfig, preset

ConflictMode = Literal["ca", "pcgrad", "none"]
CaRescale = Literal["alpha", "alpha_sq", "none"]
PersonalForm = Literal["add", "interp"]
HyperGrad = Literal["raw", "cosine"]

BASE_METHODS = ("local", "fedavg", "fedprox", "fedbn", "pfmsmtrec", "central")
ABLATIONS = {
    "pfmsmtrec-no-template": "w/o parameter template (plain experts, personalized aggregation)",
    "pfmsmtrec-no-fedbn": "w/o FedBN (BatchNorm averaged)",
    "pfmsmtrec-no-conflict": "w/o conflict coordination (g = mean Δ)",
    "pfmsmtrec-no-personal": "w/o personalized aggregation (a_c = b_c = 1)",
    "pfmsmtrec-no-tower": "w/o tower aggregation (towers local)",
    "pfmsmtrec-mu0": "μ = 0 (no personalization regularizer)",
    "pfmsmtrec-no-shrink": "template_l2 = 0 (ALGORITHM.md exactly as written)",
}
METHODS = BASE_METHODS + tuple(ABLATIONS)


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

    method: str = "pfmsmtrec"
    template: str = "additive3"
    mu: float = 1e-3
    conflict: ConflictMode = "ca"
    ca_alpha: float = 0.4
    ca_rescale: CaRescale = "alpha"
    personalize: bool = True
    tower_aggregation: bool = True
    fedbn: bool = True
    init_weight: float = 0.1
    hyper_lr: float = 0.01
    hyper_momentum: float = 0.9
    hyper_weight_decay: float = 1e-4
    template_l2: float = 0.0
    share_embeddings: bool = False
    personal_form: PersonalForm = "add"
    hyper_grad: HyperGrad = "raw"
    attention_temperature: float | None = None

    def parameter_groups(self) -> ParameterGroups:
        keep = Policy.KEEP
        if self.method == "local" or self.method == "central":
            return ParameterGroups({})
        embeddings = {Group.EMBEDDING: Policy.FEDAVG} if self.share_embeddings else {}
        if self.method in ("fedavg", "fedprox", "fedbn"):
            return ParameterGroups(
                {
                    **embeddings,
                    Group.GLOBAL: Policy.FEDAVG,
                    Group.SCENARIO: Policy.FEDAVG,
                    Group.GATE: Policy.FEDAVG,
                    Group.TOWER: Policy.FEDAVG,
                    Group.BN: keep if self.method == "fedbn" else Policy.FEDAVG,
                }
            )
        if self.method == "pfmsmtrec":
            # With plain experts (template "none") the whole expert weight goes through
            # conflict coordination, so the ablation isolates the template itself.
            expert_global = Policy.PERSONAL_EXPERT if self.template == "none" else Policy.FEDAVG
            return ParameterGroups(
                {
                    **embeddings,
                    Group.GLOBAL: expert_global,
                    Group.SCENARIO: Policy.PERSONAL_EXPERT,
                    Group.TOWER: Policy.PERSONAL_TOWER if self.tower_aggregation else keep,
                    Group.BN: keep if self.fedbn else Policy.FEDAVG,
                }
            )
        raise ValueError(f"unknown method {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    model = preset(preset_name, **{"template": fed.template, **(model_overrides or {})})
    return fed, model


# Knobs a user may set over a method's defaults (flags of `simulate`, aggregator settings).
FEDERATION_KNOBS = (
    "mu",
    "conflict",
    "ca_alpha",
    "ca_rescale",
    "template",
    "template_l2",
    "share_embeddings",
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
    """Method name (a baseline, pfmsmtrec or one of its ablations) → its configuration."""
    base: dict[str, FederationConfig] = {
        "local": FederationConfig("local", template="none", mu=0.0),
        "fedavg": FederationConfig("fedavg", template="none", mu=0.0),
        "fedprox": FederationConfig("fedprox", template="none", mu=0.01),
        "fedbn": FederationConfig("fedbn", template="none", mu=0.0),
        "central": FederationConfig("central", template="none", mu=0.0),
        # template_l2 chosen on validation (docs/METHOD.md, "Tuning").
        "pfmsmtrec": FederationConfig("pfmsmtrec", template_l2=3e-3),
    }
    pf = base["pfmsmtrec"]
    ablations = {
        "pfmsmtrec-no-template": pf.with_(template="none"),
        "pfmsmtrec-no-fedbn": pf.with_(fedbn=False),
        "pfmsmtrec-no-conflict": pf.with_(conflict="none"),
        "pfmsmtrec-no-personal": pf.with_(personalize=False, init_weight=1.0),
        "pfmsmtrec-no-tower": pf.with_(tower_aggregation=False),
        "pfmsmtrec-mu0": pf.with_(mu=0.0),
        "pfmsmtrec-no-shrink": pf.with_(template_l2=0.0),
    }
    table = {**base, **ablations}
    if name not in table:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cfg = table[name]
    return cfg.with_(**{k: v for k, v in overrides.items() if v is not None})
