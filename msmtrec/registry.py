"""Model registry: a directory that scenario clients publish to and the gateway serves from.

Layout (one directory per scenario, one immutable directory per version)::

    <root>/<scenario>/LATEST                      name of the version readers should use
    <root>/<scenario>/<version>/model.safetensors full personalized state_dict
    <root>/<scenario>/<version>/metadata.json     schema, model config, round, metrics, sha256
    <root>/<scenario>/.lock                       serializes publishers of one scenario
    <root>/<scenario>/.tmp-*                      a version being written (never read)

Why it is built this way:

* **Readers only follow ``LATEST``.** A version is written into a dot-named temp directory,
  fsynced, renamed to its final name, and only then is ``LATEST`` replaced (temp file +
  ``os.replace`` + directory fsync). A crash at any point leaves either the old pointer or the
  new one, never a pointer to half a version.
* **Versions sort chronologically** as strings: ``v<seq>-r<round>-<sha8>`` with a per-scenario
  counter taken under an exclusive ``flock``, so two publishes in the same second (or a
  federation restarted at round 1) still get distinct, ordered ids. ``sha8`` is the start of
  the *content* digest (names, dtypes, shapes, bytes of the tensors): the file's own sha256
  is recorded for integrity, but it is not a fingerprint of the model, because safetensors
  writes its header metadata in no fixed order.
* **Publishing the served weights again for the same round is a no-op** that returns the
  served version (a client restarted after the last round), so duplicates never push older
  useful versions out of the retention window.
* **No pickle.** Weights are safetensors; ``load`` verifies the sha256 recorded at publish
  time, rebuilds the model from the recorded schema and config and loads the state strictly.
* Pure file-system code (no sockets), so ``msmtrec simulate --publish-to`` and the networked
  scenario clients write the same registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from msmtrec.codec import tensors_digest
from msmtrec.data.schema import FeatureSchema
from msmtrec.device import host_tensors
from msmtrec.faults import fault_point
from msmtrec.identity import SCENARIO_NAME_RULE, is_scenario_name
from msmtrec.model.config import PRESETS, ModelConfig
from msmtrec.model.mmoe import MultiTaskMMoE, build_model

if TYPE_CHECKING:
    from msmtrec.federation.client import ClientRuntime
    from msmtrec.simulation import SimulationConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
LATEST_FILE = "LATEST"
PUBLISH_POLICIES = ("latest", "best-valid")
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
VERSION_RE = re.compile(r"^v(\d{6,})-r(\d{5,})-([0-9a-f]{8})$")
DEFAULT_RETENTION = 5


class RegistryError(ValueError):
    """A registry entry that cannot be used; the message says which file and why."""


class NoVersionError(RegistryError, LookupError):
    """A scenario without any published version (no ``LATEST`` pointer yet)."""


def validation_auc(metrics: dict) -> float | None:
    """Mean AUC over the tasks of ``metrics["valid"]`` (undefined AUCs skipped)."""
    tasks = (metrics or {}).get("valid") or {}
    aucs = [m.get("auc") for m in tasks.values() if isinstance(m, dict)]
    aucs = [a for a in aucs if isinstance(a, int | float)]
    return sum(aucs) / len(aucs) if aucs else None


def validate_scenario(name: str) -> str:
    """Scenario names become directory names: refuse anything that could escape the root."""
    if not is_scenario_name(name):
        raise RegistryError(f"invalid scenario name {name!r}: {SCENARIO_NAME_RULE}")
    return name


def version_sequence(name: str) -> int:
    """Versions order by their counter (numerically: it may outgrow its six digits)."""
    return int(VERSION_RE.fullmatch(name).group(1))  # type: ignore[union-attr]


def _version_names(sdir: Path) -> list[str]:
    return sorted(
        (p.name for p in sdir.iterdir() if VERSION_RE.fullmatch(p.name)), key=version_sequence
    )


def validate_version(name: str) -> str:
    if not isinstance(name, str) or not VERSION_RE.fullmatch(name):
        raise RegistryError(f"invalid version id {name!r}")
    return name


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as described by its metadata.json."""

    scenario: str
    version: str
    round: int
    created: str
    path: Path
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.metadata["schema"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.metadata["model_config"])

    def summary(self) -> dict[str, Any]:
        """What a status API shows: identity, round, metrics — not the whole schema."""
        return {
            "version": self.version,
            "round": self.round,
            "created": self.created,
            "preset": self.metadata.get("preset"),
            "tasks": self.metadata.get("tasks"),
            "metrics": self.metrics,
            "sha256": self.sha256,
        }


@dataclass
class LoadedModel:
    """A verified model in eval mode plus what it was published with."""

    info: VersionInfo
    model: MultiTaskMMoE
    schema: FeatureSchema
    config: ModelConfig


# --------------------------------------------------------------------------------------------
# helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    """Metrics come from numpy/torch code: make them strict JSON (NaN/inf become null)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in registry metadata")


def preset_name(config: ModelConfig) -> str:
    """The preset whose sizes the config has (template/head/dropout are switches, not sizes)."""
    for name, p in PRESETS.items():
        if (p.embed_dim, p.num_experts, p.expert_dims, p.tower_dims) == (
            config.embed_dim,
            config.num_experts,
            config.expert_dims,
            config.tower_dims,
        ):
            return name
    return "custom"


def _model_of(source: ClientRuntime | MultiTaskMMoE) -> MultiTaskMMoE:
    """The model to publish: a client runtime's evaluated model (its method decides: e.g.
    Ditto's personal model), or the model itself."""
    evaluated = getattr(source, "evaluated_model", None)
    model = evaluated() if callable(evaluated) else getattr(source, "model", source)
    if not isinstance(model, MultiTaskMMoE):
        raise TypeError(
            f"publish() needs a ClientRuntime or a MultiTaskMMoE, got {type(source).__name__}"
        )
    return model


# --------------------------------------------------------------------------------------------
# the registry


class ModelRegistry:
    """Publish and read per-scenario model versions under ``root`` (see the module docstring).

    ``retention``: how many newest versions of a scenario to keep; older ones are pruned after
    each publish (the one ``LATEST`` points to is never pruned).
    """

    def __init__(self, root: Path | str, retention: int = DEFAULT_RETENTION) -> None:
        if retention < 1:
            raise ValueError("retention must be >= 1")
        self.root = Path(root)
        self.retention = retention

    # ---- paths

    def scenario_dir(self, scenario: str) -> Path:
        return self.root / validate_scenario(scenario)

    def version_dir(self, scenario: str, version: str) -> Path:
        return self.scenario_dir(scenario) / validate_version(version)

    # ---- writing

    @contextlib.contextmanager
    def _locked(self, scenario: str) -> Iterator[Path]:
        """Exclusive per-scenario lock: one publisher at a time picks the next sequence number,
        moves the pointer and prunes. Readers never take it."""
        sdir = self.scenario_dir(scenario)
        sdir.mkdir(parents=True, exist_ok=True)
        with open(sdir / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield sdir
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def publish(
        self,
        scenario: str,
        source: ClientRuntime | MultiTaskMMoE,
        *,
        round: int,
        metrics: dict | None = None,
        extra: dict | None = None,
        policy: str = "latest",
    ) -> str:
        """Store ``source``'s full state_dict as a new version, move ``LATEST`` to it, prune.

        Returns the version id. ``metrics`` (e.g. ``{"valid": {...}, "test": {...}}``) and
        ``extra`` must be JSON-like; NaN becomes null. ``policy``: ``latest`` moves ``LATEST``
        to every new version; ``best-valid`` only when the new version's mean validation AUC
        is at least the served one's (model selection on validation, never on test) — the
        version is stored either way.
        """
        if policy not in PUBLISH_POLICIES:
            raise ValueError(f"policy must be one of {PUBLISH_POLICIES}, got {policy!r}")
        validate_scenario(scenario)
        if int(round) < 0:
            raise ValueError("round must be >= 0")
        model = _model_of(source)
        state = host_tensors(model.state_dict())  # CPU float32 whatever the device
        content = tensors_digest(state)
        extra = dict(extra or {})
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "scenario": scenario,
            "round": int(round),
            "preset": extra.pop("preset", None) or preset_name(model.config),
            "schema": model.schema.to_dict(),
            "model_config": model.config.to_dict(),
            "tasks": list(model.tasks),
            "metrics": _jsonable(metrics or {}),
            "extra": _jsonable(extra),
            "parameters": sum(p.numel() for p in model.parameters()),
            "torch_version": torch.__version__,
        }
        privacy = getattr(source, "privacy_summary", None)
        if callable(privacy) and privacy() is not None:  # ε spent by the training behind it
            meta["privacy"] = _jsonable(privacy())
        with self._locked(scenario) as sdir:
            self._remove_stale_temps(sdir)
            served = self._served_identical(sdir, content, int(round))
            if served is not None:
                return served  # e.g. a client restarted after the last round: nothing new
            # serialized only now: a republished model costs one digest, not a file's worth
            weights = st_save(state, metadata={"format": "pt", "scenario": scenario})
            meta["weights"] = {
                "file": WEIGHTS_FILE,
                "sha256": hashlib.sha256(weights).hexdigest(),
                "content_sha256": content,
                "bytes": len(weights),
            }
            seq = self._next_sequence(sdir)
            version = f"v{seq:06d}-r{int(round):05d}-{content[:8]}"
            now = datetime.now(UTC)
            meta["version"] = version
            meta["created"] = now.isoformat(timespec="microseconds")
            meta["created_unix"] = now.timestamp()
            tmp = sdir / f"{TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                _write_file(tmp / WEIGHTS_FILE, weights)
                fault_point("registry.version_write", int(round))
                _write_file(
                    tmp / METADATA_FILE,
                    json.dumps(meta, indent=2, allow_nan=False).encode(),
                )
                _fsync_dir(tmp)
                os.rename(tmp, sdir / version)  # fails if the name exists: never overwrite
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fsync_dir(sdir)
            fault_point("registry.before_latest", int(round))
            if policy == "latest" or self._beats_served(sdir, meta["metrics"]):
                self._set_latest(sdir, version)
            self._prune(sdir, keep=version)
        return version

    def _served_identical(self, sdir: Path, content: str, round_number: int) -> str | None:
        """The served version if it holds these very weights from this round, else None.

        Publishing it again would only add a duplicate version and push a useful older one
        out of the retention window.
        """
        served = self._read_pointer(sdir)
        if served is None:
            return None
        try:
            meta = json.loads((sdir / served / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return None
        same_weights = meta.get("weights", {}).get("content_sha256") == content
        return served if same_weights and meta.get("round") == round_number else None

    def _beats_served(self, sdir: Path, metrics: dict) -> bool:
        """Is the mean validation AUC of ``metrics`` at least that of the served version?"""
        served = self._read_pointer(sdir)
        if served is None:
            return True
        try:
            old = json.loads((sdir / served / METADATA_FILE).read_text()).get("metrics", {})
        except (OSError, ValueError):
            return True  # an unreadable served version is worth replacing
        new_auc, old_auc = validation_auc(metrics), validation_auc(old)
        return old_auc is None or (new_auc is not None and new_auc >= old_auc)

    @staticmethod
    def _next_sequence(sdir: Path) -> int:
        names = _version_names(sdir)
        return version_sequence(names[-1]) + 1 if names else 1

    @staticmethod
    def _set_latest(sdir: Path, version: str) -> None:
        tmp = sdir / f"{TMP_PREFIX}{LATEST_FILE}-{uuid.uuid4().hex[:8]}"
        try:
            _write_file(tmp, (version + "\n").encode())
            os.replace(tmp, sdir / LATEST_FILE)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(sdir)

    @staticmethod
    def _remove_stale_temps(sdir: Path) -> None:
        """Under the lock no other publisher is writing, so any temp entry is a crash leftover."""
        for p in sdir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def _prune(self, sdir: Path, keep: str) -> None:
        """Keep the ``retention`` newest versions and the pointed-to one. A version is first
        renamed to a temp name, so a reader listing versions never sees it half deleted."""
        versions = _version_names(sdir)
        latest = self._read_pointer(sdir) or keep
        for name in versions[: max(0, len(versions) - self.retention)]:
            if name in (latest, keep):
                continue
            doomed = sdir / f"{TMP_PREFIX}prune-{name}"
            os.rename(sdir / name, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # ---- reading

    def scenarios(self) -> list[str]:
        """Scenarios that have a ``LATEST`` pointer (i.e. at least one complete version)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and is_scenario_name(p.name) and (p / LATEST_FILE).is_file()
        )

    @staticmethod
    def _read_pointer(sdir: Path) -> str | None:
        try:
            text = (sdir / LATEST_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return validate_version(text)

    def latest_version(self, scenario: str) -> str | None:
        """The version id ``LATEST`` names (cheap: one small file read; used for polling)."""
        return self._read_pointer(self.scenario_dir(scenario))

    def latest(self, scenario: str) -> VersionInfo | None:
        version = self.latest_version(scenario)
        return None if version is None else self.info(scenario, version)

    def version_ids(self, scenario: str) -> list[str]:
        """Ids of the complete versions of a scenario, oldest first (no metadata read)."""
        sdir = self.scenario_dir(scenario)
        return _version_names(sdir) if sdir.is_dir() else []

    def versions(self, scenario: str) -> list[VersionInfo]:
        """Complete versions of a scenario, oldest first (temp dirs are never listed)."""
        sdir = self.scenario_dir(scenario)
        if not sdir.is_dir():
            return []
        out = []
        for name in _version_names(sdir):
            with contextlib.suppress(FileNotFoundError):  # pruned while we listed
                out.append(self.info(scenario, name))
        return out

    def info(self, scenario: str, version: str) -> VersionInfo:
        vdir = self.version_dir(scenario, version)
        path = vdir / METADATA_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: unreadable metadata: {exc}") from exc
        if not isinstance(meta, dict):
            raise RegistryError(f"{path}: metadata is not a JSON object")
        if meta.get("format_version") != FORMAT_VERSION:
            raise RegistryError(
                f"{path}: format_version {meta.get('format_version')!r}, "
                f"this code reads {FORMAT_VERSION}"
            )
        if meta.get("scenario") != scenario or meta.get("version") != version:
            raise RegistryError(
                f"{path}: metadata names {meta.get('scenario')}/{meta.get('version')}, "
                f"not {scenario}/{version} (a copied or renamed version directory?)"
            )
        try:
            return VersionInfo(
                scenario=scenario,
                version=version,
                round=int(meta["round"]),
                created=str(meta["created"]),
                path=vdir,
                sha256=str(meta["weights"]["sha256"]),
                metrics=meta.get("metrics") or {},
                metadata=meta,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: missing or malformed field {exc}") from exc

    def load(self, scenario: str, version: str | None = None) -> LoadedModel:
        """Rebuild and verify one version (default: the one ``LATEST`` names).

        Raises :class:`NoVersionError` when nothing is published, :class:`RegistryError` on a
        bad pointer, unreadable metadata, a hash mismatch, or weights that do not fit the
        recorded schema/config (strict ``load_state_dict``).
        """
        if version is None:
            version = self.latest_version(scenario)
            if version is None:
                raise NoVersionError(f"scenario {scenario!r} has no published version")
        try:
            info = self.info(scenario, version)
        except FileNotFoundError as exc:
            raise RegistryError(f"{scenario}/{version}: version directory is missing") from exc
        wpath = info.path / WEIGHTS_FILE
        try:
            data = wpath.read_bytes()
        except OSError as exc:
            raise RegistryError(f"{wpath}: cannot read weights: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.sha256:
            raise RegistryError(
                f"{wpath}: sha256 {digest[:12]}… does not match metadata {info.sha256[:12]}…"
            )
        try:
            schema = info.schema
            config = info.model_config
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(
                f"{info.path / METADATA_FILE}: bad schema or config: {exc}"
            ) from exc
        try:
            state = st_load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise RegistryError(f"{wpath}: not a valid safetensors file: {exc}") from exc
        try:
            model = build_model(schema, config, seed=0)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as exc:
            raise RegistryError(f"{wpath}: weights do not fit the recorded model: {exc}") from exc
        model.eval()
        return LoadedModel(info=info, model=model, schema=schema, config=config)


# --------------------------------------------------------------------------------------------
# simulation hook


def publisher_for_simulation(
    root: Path | str,
    sim_config: SimulationConfig,
    retention: int = DEFAULT_RETENTION,
    policy: str = "latest",
) -> Callable[[int, dict[str, ClientRuntime]], None]:
    """An ``on_round`` hook for :func:`msmtrec.simulation.run_simulation` that publishes every
    client's personalized model after each round, with its validation and test metrics
    (``policy`` as in :meth:`ModelRegistry.publish`)."""
    registry = ModelRegistry(root, retention=retention)
    extra = {
        "source": "simulation",
        "method": sim_config.method,
        "preset": sim_config.preset,
        "seed": sim_config.seed,
    }

    def on_round(round_number: int, clients: dict[str, ClientRuntime]) -> None:
        for scenario, runtime in clients.items():
            metrics = {"valid": runtime.evaluate("valid"), "test": runtime.evaluate("test")}
            start = time.perf_counter()
            version = registry.publish(
                scenario, runtime, round=round_number, metrics=metrics, extra=extra,
                policy=policy,
            )  # fmt: skip
            print(
                f"published {scenario} {version} to {registry.root} "
                f"({time.perf_counter() - start:.2f}s)"
            )

    return on_round
