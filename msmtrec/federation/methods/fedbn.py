"""``fedbn``: FedAvg with every BatchNorm kept local (Li et al. 2021)."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups, Policy
from msmtrec.federation.methods.fedavg import fedavg_table
from msmtrec.federation.methods.registry import Method, register


def policies(cfg: FederationConfig) -> ParameterGroups:
    return fedavg_table(bn=Policy.KEEP)


METHOD = register(
    Method(
        name="fedbn",
        description="fedavg with BatchNorm kept local",
        defaults=FederationConfig("fedbn", template="none", mu=0.0),
        policies=policies,
    )
)
