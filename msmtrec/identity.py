"""The one rule for scenario names, shared by every side that reads or writes one.

Why: a scenario name names a directory in the model registry, a client's state directory and
a token file, and travels on the wire in a join request. The aggregator, the registry and the
deployment tools once carried two regexes that disagreed (one accepted a leading ``-``, which
a command line then reads as a flag); this module is the only definition. Pure: no sockets,
no third-party imports, so the core, the services and the tools can all use it.
"""

from __future__ import annotations

import re

SCENARIO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SCENARIO_NAME_RULE = (
    "1-64 letters, digits, '_' or '-', starting with a letter or digit "
    "(it names directories in the model registry)"
)


def is_scenario_name(name: object) -> bool:
    """Whether ``name`` is a valid scenario name (a whole-string match: no trailing newline)."""
    return isinstance(name, str) and SCENARIO_NAME_RE.fullmatch(name) is not None


def check_scenario_name(name: object) -> str:
    """``name`` itself if valid, else ValueError saying the rule."""
    if not is_scenario_name(name):
        raise ValueError(f"invalid scenario name {name!r}: {SCENARIO_NAME_RULE}")
    return name  # type: ignore[return-value]
