"""The registry's read side: listing scenarios and versions, reading metadata, loading models."""

from __future__ import annotations

import contextlib
import hashlib
import json

from safetensors.torch import load as st_load

from msmtrec.identity import is_scenario_name
from msmtrec.model.mmoe import build_model
from msmtrec.registry.base import _RegistryBase
from msmtrec.registry.layout import (
    FORMAT_VERSION,
    LATEST_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    NoVersionError,
    RegistryError,
    _version_names,
)
from msmtrec.registry.metadata import LoadedModel, VersionInfo


class _Reader(_RegistryBase):
    """Read versions: readers only follow ``LATEST`` and never take the publish lock."""

    def scenarios(self) -> list[str]:
        """Scenarios that have a ``LATEST`` pointer (i.e. at least one complete version)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and is_scenario_name(p.name) and (p / LATEST_FILE).is_file()
        )

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
