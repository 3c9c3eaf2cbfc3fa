"""``local``: every client trains alone; nothing is ever sent."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.groups import ParameterGroups
from msmtrec.federation.methods.registry import Method, register


def policies(cfg: FederationConfig) -> ParameterGroups:
    return ParameterGroups({})


METHOD = register(
    Method(
        name="local",
        description="each client trains alone (no communication)",
        defaults=FederationConfig("local", template="none", mu=0.0),
        policies=policies,
    )
)
