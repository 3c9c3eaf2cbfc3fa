"""Paths and the ``LATEST`` pointer shared by the registry's publish and read sides."""

from __future__ import annotations

from pathlib import Path

from msmtrec.registry.layout import (
    DEFAULT_RETENTION,
    LATEST_FILE,
    validate_scenario,
    validate_version,
)


class _RegistryBase:
    """Root, retention, per-scenario paths and the pointer reader."""

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

    @staticmethod
    def _read_pointer(sdir: Path) -> str | None:
        try:
            text = (sdir / LATEST_FILE).read_text().strip()
        except FileNotFoundError:
            return None
        return validate_version(text)
