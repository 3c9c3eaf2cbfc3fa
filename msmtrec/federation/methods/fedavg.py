"""``fedavg``: a plain MMoE, everything but the embeddings averaged (McMahan et al. 2017)."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import Group, ParameterGroups, Policy
from msmtrec.federation.methods.registry import Method, register


def fedavg_table(bn: Policy = Policy.FEDAVG) -> ParameterGroups:
    """Experts, gates and towers sample-weighted averaged; BatchNorm per ``bn``."""
    return ParameterGroups(
        {
            Group.GLOBAL: Policy.FEDAVG,
            Group.SCENARIO: Policy.FEDAVG,
            Group.GATE: Policy.FEDAVG,
            Group.TOWER: Policy.FEDAVG,
            Group.BN: bn,
        }
    )


def policies(cfg: FederationConfig) -> ParameterGroups:
    return fedavg_table()


METHOD = register(
    Method(
        name="fedavg",
        description="plain MMoE, everything but the embeddings averaged",
        defaults=FederationConfig("fedavg", template="none", mu=0.0),
        policies=policies,
    )
)
