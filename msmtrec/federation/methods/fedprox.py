"""``fedprox``: FedAvg plus the proximal term (μ/2)‖θ − θ_start‖² (Li et al. 2020)."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups
from msmtrec.federation.methods.fedavg import fedavg_table
from msmtrec.federation.methods.registry import Method, register


def policies(cfg: FederationConfig) -> ParameterGroups:
    return fedavg_table()


METHOD = register(
    Method(
        name="fedprox",
        description="fedavg + proximal term (μ/2)‖θ_shared − θ_start‖²",
        defaults=FederationConfig("fedprox", template="none", mu=0.01),
        policies=policies,
        tunable={"mu": (1e-3, 1e-2)},
    )
)
