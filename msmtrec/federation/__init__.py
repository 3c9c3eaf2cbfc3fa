"""Federation core: parameter groups, methods, strategies, conflict coordination, client runtime."""

from msmtrec._lazy import lazy_exports

_EXPORTS = {
    "ClientRuntime": "msmtrec.federation.client",
    "round_seed": "msmtrec.federation.client",
    "METHODS": "msmtrec.federation.config",
    "FederationConfig": "msmtrec.federation.config",
    "resolve_experiment": "msmtrec.federation.config",
    "resolve_method": "msmtrec.federation.config",
    "Method": "msmtrec.federation.methods",
    "check_networked": "msmtrec.federation.methods",
    "get_method": "msmtrec.federation.methods",
    "method_names": "msmtrec.federation.methods",
    "register": "msmtrec.federation.methods",
    "Group": "msmtrec.federation.groups",
    "ParameterGroups": "msmtrec.federation.groups",
    "Policy": "msmtrec.federation.groups",
    "classify": "msmtrec.federation.groups",
    "AggregationError": "msmtrec.federation.strategy",
    "ClientUpdate": "msmtrec.federation.strategy",
    "Strategy": "msmtrec.federation.strategy",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
