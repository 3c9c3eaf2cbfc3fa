"""Federation methods as registered plug-ins (see :mod:`.registry`): one module per method."""

from msmtrec.federation.methods.registry import (
    Method,
    check_networked,
    get_method,
    method_names,
    register,
)

__all__ = ["Method", "check_networked", "get_method", "method_names", "register"]
