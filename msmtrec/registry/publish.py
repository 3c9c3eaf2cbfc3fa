"""The registry's write side: publishing a version under a lock, moving ``LATEST``, retention."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save as st_save

from msmtrec.codec import tensors_digest
from msmtrec.device import host_tensors
from msmtrec.faults import fault_point
from msmtrec.model.mmoe import MultiTaskMMoE
from msmtrec.registry.base import _RegistryBase
from msmtrec.registry.files import _fsync_dir, _write_file
from msmtrec.registry.layout import (
    FORMAT_VERSION,
    LATEST_FILE,
    LOCK_FILE,
    METADATA_FILE,
    PUBLISH_POLICIES,
    TMP_PREFIX,
    WEIGHTS_FILE,
    _version_names,
    validate_scenario,
    version_sequence,
)
from msmtrec.registry.metadata import _jsonable, preset_name, validation_auc

if TYPE_CHECKING:
    from msmtrec.federation.client import ClientRuntime


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


class _Publisher(_RegistryBase):
    """Publish versions, move ``LATEST`` and prune old versions (one publisher per scenario)."""

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
