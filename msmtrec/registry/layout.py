"""Registry names on disk: file names, version ids, scenario-name checks and the errors."""

from __future__ import annotations

import re
from pathlib import Path

from msmtrec.identity import SCENARIO_NAME_RULE, is_scenario_name

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
