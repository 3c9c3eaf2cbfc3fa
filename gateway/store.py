"""The models the gateway serves, one per scenario, and how a new version replaces an old one.

Swap semantics: the store holds an immutable ``dict[scenario, ServingModel]`` and replaces the
whole dict (copy-on-write, under a lock that only writers take). A request reads the current
reference once and uses that ``ServingModel`` to the end, so a swap never changes the model
under an in-flight request and never makes a request fail; the old model is freed when its
last request finishes.

A new version is loaded, verified (sha256, strict state_dict), checked against the configured
feature schema, compiled and smoke-tested entirely off the request path. Any failure refuses
that version — logged once with the reason, counted in ``msmtrec_gateway_reloads_total`` — and
the previous model keeps serving. A version is immutable once published, so a refused version
is not retried until the pointer moves again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.engine import Engine, compile_model
from gateway.features import FeaturePlan
from gateway.metrics import GatewayMetrics
from msmtrec.data.schema import FeatureSchema
from msmtrec.device import resolve_device
from msmtrec.registry import ModelRegistry, RegistryError, VersionInfo, version_sequence

log = logging.getLogger("msmtrec.gateway")


@dataclass(frozen=True)
class ServingModel:
    """One loaded version plus everything a request needs, prepared at load time."""

    scenario: str
    info: VersionInfo
    engine: Engine
    plan: FeaturePlan
    tasks: tuple[str, ...]
    loaded_at: float
    # Prometheus children resolved once (label lookup is not free per request).
    observe_ok: Any = field(repr=False, default=None)
    observe_invalid: Any = field(repr=False, default=None)
    observe_error: Any = field(repr=False, default=None)
    batch_size: Any = field(repr=False, default=None)
    instances: Any = field(repr=False, default=None)
    validation_errors: Any = field(repr=False, default=None)
    internal_errors: Any = field(repr=False, default=None)
    oov: tuple = field(repr=False, default=())

    @property
    def version(self) -> str:
        return self.info.version


@dataclass
class RefusedVersion:
    """A model version the gateway would not load (not a wire refusal): why, and when."""

    version: str | None
    reason: str
    at: float


class ModelStore:
    def __init__(
        self,
        registry: ModelRegistry,
        schema: FeatureSchema,
        metrics: GatewayMetrics,
        engine: str = "compiled",
        device: str = "cpu",
    ) -> None:
        self.registry = registry
        self.schema = schema
        self.metrics = metrics
        self.engine_kind = engine
        self.device = resolve_device(device)
        self._models: dict[str, ServingModel] = {}
        self._write_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.known: tuple[str, ...] = ()  # scenarios seen in the registry at the last scan
        self.refusals: dict[str, RefusedVersion] = {}  # last refused version per scenario
        self._refused: set[tuple[str, str]] = set()
        self.scans = 0

    # ---- reading (request path: one dict lookup, no lock)

    def get(self, scenario: str) -> ServingModel | None:
        return self._models.get(scenario)

    def snapshot(self) -> dict[str, ServingModel]:
        return self._models

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when the registry has scenarios and every one of them serves a model."""
        models = self._models
        if self.scans == 0:
            return False, {"*": "registry not scanned yet"}
        if not self.known:
            return False, {"*": f"no published scenario under {self.registry.root}"}
        waiting = {}
        for s in self.known:
            if s not in models:
                refusal = self.refusals.get(s)
                waiting[s] = refusal.reason if refusal else "loading"
        return not waiting, waiting

    # ---- writing (watcher thread)

    def _swap(self, model: ServingModel) -> None:
        with self._write_lock:
            old = self._models.get(model.scenario)
            new = dict(self._models)
            new[model.scenario] = model
            self._models = new  # one reference assignment: readers see old or new, whole
        refusal = self.refusals.get(model.scenario)
        if refusal is not None and (
            refusal.version is None
            or version_sequence(refusal.version) <= version_sequence(model.version)
        ):
            del self.refusals[model.scenario]  # superseded; a newer refusal stays visible
        self.metrics.served(
            model.scenario, old.version if old else None, model.version, model.info.round,
            model.loaded_at,
        )  # fmt: skip
        if old is None:
            log.info("serving %s %s (round %d)", model.scenario, model.version, model.info.round)
        else:
            log.info(
                "swapped %s %s -> %s (round %d)",
                model.scenario, old.version, model.version, model.info.round,
            )  # fmt: skip

    def build(self, scenario: str, version: str) -> ServingModel:
        """Load, verify, check and compile one version. Raises RegistryError/ValueError."""
        loaded = self.registry.load(scenario, version)
        if loaded.schema != self.schema:
            raise RegistryError(
                f"{scenario}/{version}: feature schema differs from the gateway's "
                f"({_schema_diff(loaded.schema, self.schema)})"
            )
        engine = compile_model(loaded.model, self.engine_kind, self.device)
        m = self.metrics
        return ServingModel(
            scenario=scenario,
            info=loaded.info,
            engine=engine,
            plan=FeaturePlan(loaded.schema),
            tasks=tuple(loaded.model.tasks),
            loaded_at=time.time(),
            observe_ok=m.latency.labels(scenario, "200").observe,
            observe_invalid=m.latency.labels(scenario, "422").observe,
            observe_error=m.latency.labels(scenario, "500").observe,
            batch_size=m.batch_size.labels(scenario).observe,
            instances=m.instances.labels(scenario).inc,
            validation_errors=m.errors.labels(scenario, "validation").inc,
            internal_errors=m.errors.labels(scenario, "internal").inc,
            oov=tuple(m.oov.labels(scenario, f) for f in loaded.schema.categorical),
        )

    def _refuse(self, scenario: str, version: str | None, exc: BaseException) -> None:
        reason = str(exc) or type(exc).__name__
        self.refusals[scenario] = RefusedVersion(version, reason, time.time())
        if version is not None:
            self._refused.add((scenario, version))
        self.metrics.reloads.labels(scenario, "failure").inc()
        current = self._models.get(scenario)
        keeps = f"; still serving {current.version}" if current else "; nothing to serve yet"
        log.error("refused %s %s: %s%s", scenario, version, reason, keeps)

    def _try(self, scenario: str, version: str) -> bool:
        if (scenario, version) in self._refused:
            return False
        try:
            model = self.build(scenario, version)
        except (RegistryError, ValueError, OSError, RuntimeError) as exc:
            self._refuse(scenario, version, exc)
            return False
        self._swap(model)
        return True

    def refresh(self) -> None:
        """One scan of the registry: load what ``LATEST`` names where it changed."""
        with self._refresh_lock:
            try:
                scenarios = self.registry.scenarios()
            except OSError as exc:
                log.error("cannot list registry %s: %s", self.registry.root, exc)
                return
            self.known = tuple(scenarios)
            for scenario in scenarios:
                self._refresh_one(scenario)
            self.scans += 1

    def _refresh_one(self, scenario: str) -> None:
        current = self._models.get(scenario)
        try:
            pointer = self.registry.latest_version(scenario)
        except (RegistryError, OSError) as exc:
            if self.refusals.get(scenario, RefusedVersion(None, "", 0)).reason != str(exc):
                self._refuse(scenario, None, exc)
            return
        if pointer is None:
            return
        if current is not None and current.version == pointer:
            return
        if self._try(scenario, pointer) or current is not None:
            return
        # Nothing served yet and the newest version is broken: serve the newest good one, so
        # a restarted gateway serves what it served before the bad publish.
        try:
            older = self.registry.version_ids(scenario)
        except (RegistryError, OSError):
            return
        for version in reversed(older):
            if version != pointer and self._try(scenario, version):
                log.warning("%s: serving older %s because %s was refused", scenario, version,
                            pointer)  # fmt: skip
                return


def _schema_diff(a: FeatureSchema, b: FeatureSchema) -> str:
    for name in ("categorical", "vocab_sizes", "numerical", "labels", "tasks"):
        if getattr(a, name) != getattr(b, name):
            return f"{name}: {list(getattr(a, name))[:6]}… vs {list(getattr(b, name))[:6]}…"
    return "id column or name"
