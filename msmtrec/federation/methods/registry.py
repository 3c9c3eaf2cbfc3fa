"""The method registry: every ``--method`` is a :class:`Method` registered by name.

A method is data, not a branch in the core: its federation defaults (whose ``method`` field
names the *family* whose policy table applies, e.g. every ``pfmsmtrec-*`` ablation is a
``pfmsmtrec`` configuration), the knobs a benchmark tunes, whether it can run over the network,
and optionally the client-side behaviour (:class:`~msmtrec.federation.methods.hooks.ClientHooks`)
or, for pooled non-federated references, a simulation runner of its own. Adding a method is one
module that calls :func:`register` (listed in ``BUILTIN_MODULES``) plus its tests.

Kept free of torch at import time: settings models and light-weight commands read the names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from msmtrec.data.dataset import ScenarioSplits
    from msmtrec.federation.config import FederationConfig
    from msmtrec.federation.groups import ParameterGroups
    from msmtrec.federation.methods.hooks import ClientHooks
    from msmtrec.model.config import ModelConfig
    from msmtrec.training.history import Log, RoundRecord
    from msmtrec.training.trainer import TrainConfig


class PooledRun(Protocol):
    """What a pooled runner reads of the run's configuration. ``msmtrec.simulation``'s
    ``SimulationConfig`` has these fields; the registry names only them, because the
    federation layer sits below the simulation and must not import it."""

    seed: int
    rounds: int
    train: TrainConfig
    progress: bool
    device: str  # auto, cpu, cuda[:N] (msmtrec.device)
    precision: str  # fp32 or bf16


Policies = Callable[["FederationConfig"], "ParameterGroups"]
HooksFactory = Callable[["FederationConfig"], "ClientHooks"]
# (run configuration, federation config, model config, splits, log) -> one record per round
PooledRunner = Callable[
    [
        PooledRun,
        "FederationConfig",
        "ModelConfig",
        "dict[str, ScenarioSplits]",
        "Log",
    ],
    "list[RoundRecord]",
]


@dataclass(frozen=True)
class Method:
    """One ``--method``.

    ``defaults``: its :class:`FederationConfig`; ``defaults.method`` is the family whose
    ``policies`` decide what leaves a client (a variant such as an ablation leaves
    ``policies`` unset and reuses its family's). ``tunable``: knob → candidate values a
    benchmark tries besides the learning rate. ``networked``: False for references that pool
    every scenario's data (the aggregator and ``msmtrec up`` refuse them). ``client_hooks``:
    builds the per-client behaviour (default: train the model the server sends and evaluate
    it). ``pooled_runner``: a simulation that replaces the federated loop (central methods).
    """

    name: str
    description: str
    defaults: FederationConfig
    policies: Policies | None = None
    tunable: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    networked: bool = True
    client_hooks: HooksFactory | None = None
    pooled_runner: PooledRunner | None = None

    @property
    def family(self) -> str:
        return self.defaults.method


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method``; a name can be registered once. A variant's family must exist."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    if method.family == method.name:
        if method.policies is None:
            raise ValueError(f"method {method.name!r}: a family method needs its policies")
    elif method.family not in _REGISTRY:
        raise ValueError(f"method {method.name!r}: its family {method.family!r} is not registered")
    elif method.policies is not None or method.client_hooks is not None:
        raise ValueError(
            f"method {method.name!r} is a variant of {method.family!r}: policies and client "
            "hooks come from the family"
        )
    unknown = set(method.tunable) - set(type(method.defaults).__dataclass_fields__)
    if unknown:
        raise ValueError(f"method {method.name!r}: unknown tunable knobs {sorted(unknown)}")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is a ValueError listing the choices."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def method_names(*, networked: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order; ``networked=True`` only those the aggregator
    can run, ``False`` only the simulation-only ones."""
    _load_builtins()
    return tuple(n for n, m in _REGISTRY.items() if networked is None or m.networked == networked)


def check_networked(name: str) -> Method:
    """The method ``name`` if it can run as a networked federation, else a ValueError that
    says why (central references pool every scenario's data in one place)."""
    method = get_method(name)
    if not method.networked:
        raise ValueError(
            f"method {name!r} pools the data of every scenario in one place (a non-private "
            f"reference); it runs only in `msmtrec simulate`. Networked methods: "
            f"{', '.join(method_names(networked=True))}"
        )
    return method


# The built-in methods, in the order they are listed (baselines, PF-MSMTrec and its
# ablations, then the personalized-FL baselines). A new built-in method adds its module here.
BUILTIN_MODULES = (
    "local",
    "fedavg",
    "fedprox",
    "fedbn",
    "pfmsmtrec",
    "central",
    "ablations",
    "fedrep",
    "ditto",
    "fedavg_ft",
    "central_msmt",
)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a module that looks up its family while loading must not recurse
    import importlib

    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(f"msmtrec.federation.methods.{module}")
    except BaseException:
        _loaded = False
        raise
