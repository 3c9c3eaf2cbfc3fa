"""The ``msmtrec`` command: one entry point for research runs and for every service.

Each area registers its own subcommands (``register(subparsers)``); services are imported
only when their command runs, so ``msmtrec simulate`` never loads gRPC or FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from msmtrec import __version__

# module with a ``register(subparsers)`` function, per area
COMMAND_MODULES: tuple[str, ...] = (
    "msmtrec_app.commands.simulate",
    "msmtrec.data.cli",
    "msmtrec_app.commands.demo",
    "aggregator.cli",
    "scenario_client.cli",
    "gateway.cli",
    "msmtrec_app.commands.up",
    "msmtrec_app.commands.deploy",
    "msmtrec_app.commands.healthcheck",
    "msmtrec_app.commands.bench",
)


def apply_process_defaults() -> None:
    """Process-wide defaults, set by the entry point before anything imports torch.

    ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment already sets it). With the default
    (active) policy, torch's OpenMP threads spin at every barrier; when other processes share
    the cores — the normal case here: an aggregator, several clients and a gateway on one
    machine, or CI — the spinning threads steal the cores from the working one. Measured on a
    busy 2-core machine with 2 torch threads: a ``small``-preset training step 3-11× faster, a
    ``paper`` step 1.3-1.6× faster (benchmarks/results/performance.md). Set
    ``OMP_WAIT_POLICY=ACTIVE`` to get spinning back on a dedicated machine. Children started
    by ``msmtrec up`` inherit it. It lives here, not in ``msmtrec/__init__``, so that importing
    the library never changes the caller's environment.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msmtrec",
        description="PF-MSMTrec: personalized federated multi-scenario multi-task recommendation",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # area not installed in this build
            raise
        mod.register(sub)
    bind_environment(parser)
    return parser


# ------------------------------------------------------------------ one CLI vocabulary
# Commands whose flags come from a service's settings model (servicekit.settings): their
# variables (MSMTREC_AGGREGATOR_*, MSMTREC_CLIENT_*, MSMTREC_GATEWAY_*) are the model's, and
# any other variable with that prefix is refused, so their tool subcommands get none.
SERVICE_COMMANDS = frozenset({"aggregator", "client", "gateway"})
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_OLD_DEFAULT = re.compile(r"\s*\((?:default:?\s[^)]*|\d[^)]*)\)")


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:  # fmt: skip
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subparsers(child, (*path, name))


def env_name(path: Sequence[str], flag: str) -> str:
    """``MSMTREC_<COMMAND>_<FLAG>``, e.g. ``MSMTREC_SIMULATE_ROUNDS``,
    ``MSMTREC_DEPLOY_DEV_SECRETS_OUT``."""
    return "_".join(["MSMTREC", *path, flag]).upper().replace("-", "_")


def _default_text(action: argparse.Action) -> str:
    value = action.default
    if action.required:
        return "required"
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "on" if value else "off"
    if value is None:
        return "unset"
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "none"
    return str(value)


def _from_environment(action: argparse.Action, raw: str, name: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise SystemExit(f"msmtrec: {name}={raw!r}: expected one of 1/0, true/false, yes/no")
        return raw.strip().lower() in _TRUE
    convert = action.type or str
    items = raw.replace(",", " ").split() if action.nargs in ("+", "*") else [raw]
    try:
        values = [convert(v) for v in items]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"msmtrec: {name}={raw!r}: {exc}") from None
    if action.choices is not None:
        bad = [v for v in values if v not in action.choices]
        if bad:
            raise SystemExit(f"msmtrec: {name}={raw!r}: choose from {list(action.choices)}")
    return values if action.nargs in ("+", "*") else values[0]


def bind_environment(parser: argparse.ArgumentParser, environ: dict | None = None) -> None:
    """Every flag of every command shows its default and its environment variable in
    ``--help``, and takes its default from that variable when it is set.

    Precedence: flag > ``MSMTREC_<COMMAND>_<FLAG>`` > the default. The service commands'
    own settings flags already say both (servicekit.settings) and are left alone.
    """
    env = os.environ if environ is None else environ
    for path, sub in _subparsers(parser):
        service = path[0] in SERVICE_COMMANDS
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if action.dest.startswith("setting__") or "env " in (action.help or ""):
                continue
            help_text = action.help or ""
            # a default the help already explains in words (computed when unset) stays so
            # (so does one whose flag is absent unless given: argparse.SUPPRESS)
            unset = action.default is None or action.default == argparse.SUPPRESS
            described = unset and "(default" in help_text
            if not described:
                help_text = _OLD_DEFAULT.sub("", help_text).strip()
            parts = [] if described else [f"default: {_default_text(action)}"]
            if not service:
                long = [o for o in action.option_strings if o.startswith("--")]
                name = env_name(path, (long or action.option_strings)[0].lstrip("-"))
                if name in env:
                    action.default = _from_environment(action, env[name], name)
                    action.required = False
                parts.append(f"env {name}")
            if not parts:
                continue
            suffix = "; ".join(parts).replace("%", "%%")
            action.help = f"{help_text} ({suffix})" if help_text else f"({suffix})"


def set_threads(threads: int | None) -> None:
    """Pin intra-op threads deliberately: oversubscription on small machines costs more than
    it gains when several processes share the cores."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )


def device_arg(value: str) -> str:
    """argparse type of ``--device``: auto, cpu, cuda, cuda:N (checked without torch)."""
    from msmtrec.device import check_device

    try:
        return check_device(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_flags(
    parser: argparse.ArgumentParser, default: str = "auto", what: str = "the clients train"
) -> None:
    """``--device`` and ``--precision`` (msmtrec.device)."""
    from msmtrec.device import DEVICE_HELP, PRECISION_HELP, PRECISIONS

    parser.add_argument(
        "--device", type=device_arg, default=default,
        help=f"where {what}: {DEVICE_HELP} (default {default})",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help=f"{PRECISION_HELP} (default fp32)"
    )


def check_device_available(device: str, command: str) -> bool:
    """False (after saying why) when ``device`` names CUDA that this machine lacks; torch is
    imported only for an explicit cuda device (auto and cpu need no check)."""
    if not device.startswith("cuda"):
        return True
    from msmtrec.device import resolve_device

    try:
        resolve_device(device, "--device")
    except ValueError as exc:
        print(f"msmtrec {command}: {exc}", file=sys.stderr)
        return False
    return True


def existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a directory")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    apply_process_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_threads(getattr(args, "threads", None))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
