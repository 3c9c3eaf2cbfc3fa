"""The ``msmtrec`` command: one entry point for research runs and for every service.

Each area registers its own subcommands (``register(subparsers)``); services are imported
only when their command runs, so ``msmtrec simulate`` never loads gRPC or FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
    return parser


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
