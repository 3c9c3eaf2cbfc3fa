"""Federation core: parameter groups, methods, strategies, conflict coordination, client runtime."""

from msmtrec.federation.client import ClientRuntime, round_seed
from msmtrec.federation.config import METHODS, FederationConfig, resolve_method
from msmtrec.federation.groups import Group, ParameterGroups, Policy, classify
from msmtrec.federation.strategy import AggregationError, ClientUpdate, Strategy

__all__ = [
    "METHODS",
    "AggregationError",
    "ClientRuntime",
    "ClientUpdate",
    "FederationConfig",
    "Group",
    "ParameterGroups",
    "Policy",
    "Strategy",
    "classify",
    "resolve_method",
    "round_seed",
]
