"""What every part of ``msmtrec up`` shares: its two exceptions and its console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class UpError(Exception):
    """A failure the user must see: what failed, and the evidence (a log tail)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached ``up``. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way (a poll that treats errors as "not yet") swallows it."""


def say(line: str = "") -> None:
    print(line, flush=True)


def atomic_write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
