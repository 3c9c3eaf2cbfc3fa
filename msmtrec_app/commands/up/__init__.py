"""``msmtrec up``: the whole deployment as local processes (see :mod:`.session`).

Parts: ``options`` (the flags), ``session`` (the sequence), ``ports``, ``prepare`` (data,
secrets, example rows), ``children`` (config files, command lines, health, stop order, on
the shared :mod:`msmtrec_app.supervisor`), ``training`` (progress from the status API),
``serving`` (first predictions, URLs) and ``reporting`` (console lines, summary).
"""

from msmtrec_app.commands.up.common import Interrupted, UpError
from msmtrec_app.commands.up.options import register
from msmtrec_app.commands.up.ports import DEFAULT_PORTS, resolve_ports
from msmtrec_app.commands.up.prepare import DEFAULT_SCENARIOS, example_instances
from msmtrec_app.commands.up.reporting import show_line
from msmtrec_app.commands.up.session import run

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_SCENARIOS",
    "Interrupted",
    "UpError",
    "example_instances",
    "register",
    "resolve_ports",
    "run",
    "show_line",
]
