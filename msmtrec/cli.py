"""The ``msmtrec`` command: one entry point for research runs and for every service.

Each area registers its own subcommands (``register(subparsers)``); services are imported
only when their command runs, so ``msmtrec simulate`` never loads gRPC or FastAPI.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from msmtrec import __version__

# module with a ``register(subparsers)`` function, per area
COMMAND_MODULES: tuple[str, ...] = (
    "msmtrec.commands.simulate",
    "msmtrec.data.cli",
    "msmtrec.commands.demo",
    "aggregator.cli",
    "scenario_client.cli",
    "gateway.cli",
    "msmtrec.commands.up",
    "msmtrec.commands.deploy",
    "msmtrec.commands.healthcheck",
    "msmtrec.commands.bench",
)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_threads(getattr(args, "threads", None))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
