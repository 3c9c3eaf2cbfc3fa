"""``pfmsmtrec``: the project's method (ALGORITHM.md §3–6); its ablations are in
:mod:`.ablations`."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import Group, ParameterGroups, Policy
from msmtrec.federation.methods.registry import Method, register


def policies(cfg: FederationConfig) -> ParameterGroups:
    keep = Policy.KEEP
    # With plain experts (template "none") the whole expert weight goes through conflict
    # coordination, so the ablation isolates the template itself.
    expert_global = Policy.PERSONAL_EXPERT if cfg.template == "none" else Policy.FEDAVG
    return ParameterGroups(
        {
            Group.GLOBAL: expert_global,
            Group.SCENARIO: Policy.PERSONAL_EXPERT,
            Group.TOWER: Policy.PERSONAL_TOWER if cfg.tower_aggregation else keep,
            Group.BN: keep if cfg.fedbn else Policy.FEDAVG,
        }
    )


METHOD = register(
    Method(
        name="pfmsmtrec",
        description="PF-MSMTrec: templated experts, conflict coordination, personalized "
        "expert and tower aggregation, FedBN",
        # template_l2 chosen on validation (docs/METHOD.md, "Tuning").
        defaults=FederationConfig("pfmsmtrec", template_l2=3e-3),
        policies=policies,
        tunable={"template_l2": (1e-3, 3e-3, 1e-2)},
    )
)
