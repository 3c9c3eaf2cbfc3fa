"""``msmtrec aggregator``: run the federation server, or make its dev certificates/tokens.

msmtrec aggregator [--config FILE] [flags]        serve (every flag: --help)
msmtrec aggregator make-dev-certs --out DIR       CA, server and client certificates
msmtrec aggregator make-tokens --scenarios ... --out DIR
msmtrec aggregator settings-table                 the Markdown table of every knob
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# gRPC's C core logs handshake failures at INFO to stderr; our own messages say it better.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def register(sub: argparse._SubParsersAction) -> None:
    from aggregator.settings import AggregatorSettings
    from servicekit.settings import add_service_arguments

    p = sub.add_parser(
        "aggregator",
        allow_abbrev=False,  # "--tokens" must not silently mean "--tokens-file"
        help="run the federation server (gRPC rounds + REST status API)",
        description="Runs synchronous federated rounds over gRPC with the same Strategy as "
        "`msmtrec simulate`, checkpoints after every round and resumes on restart. Status "
        "at http://STATUS_HOST:STATUS_PORT/v1/status. Settings: flag > env > --config file "
        "> default (docs/FEDERATION.md).",
    )
    add_service_arguments(p, AggregatorSettings)
    p.set_defaults(func=run_serve)
    # optional: without a TOOL the aggregator serves ("[TOOL]": argparse would print it bare)
    tools = p.add_subparsers(dest="aggregator_command", metavar="[TOOL]", required=False)

    certs = tools.add_parser("make-dev-certs", help="development CA, server and client certs")
    certs.add_argument("--out", type=Path, required=True, help="output directory")
    certs.add_argument("--clients", nargs="*", default=[], help="client certificate names")
    certs.add_argument(
        "--hosts",
        nargs="+",
        default=["127.0.0.1", "localhost", "::1"],
        help="server certificate subject alternative names",
    )
    certs.add_argument("--days", type=int, default=30, help="certificate validity in days")
    certs.set_defaults(func=run_make_certs)

    tokens = tools.add_parser("make-tokens", help="random per-scenario bearer tokens")
    tokens.add_argument("--scenarios", nargs="+", required=True, help="one token each")
    tokens.add_argument("--out", type=Path, required=True, help="output directory")
    tokens.set_defaults(func=run_make_tokens)

    table = tools.add_parser("settings-table", help="print the Markdown settings table")
    table.set_defaults(func=run_settings_table)


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from aggregator.server import EXIT_CONFIG, serve
    from aggregator.settings import AggregatorSettings
    from servicekit.settings import load_settings, overrides_from_args

    try:
        settings = load_settings(AggregatorSettings, args.config, overrides_from_args(args))
    except (ValidationError, ValueError, OSError) as exc:
        print(f"msmtrec aggregator: invalid settings: {exc}")
        return EXIT_CONFIG
    return serve(settings)


def run_make_certs(args: argparse.Namespace) -> int:
    from servicekit.certs import make_dev_certs

    paths = make_dev_certs(args.out, args.clients, args.hosts, args.days)
    for name, path in paths.items():
        print(f"{name:24s} {path}")
    print("development certificates only: use your PKI in production")
    return 0


def run_make_tokens(args: argparse.Namespace) -> int:
    from servicekit.auth import make_tokens

    paths = make_tokens(args.scenarios, args.out)
    print(f"aggregator tokens file: {paths.pop('tokens')}")
    for scenario, path in paths.items():
        print(f"client token of {scenario}: {path}")
    return 0


def run_settings_table(args: argparse.Namespace) -> int:
    from aggregator.settings import AggregatorSettings
    from servicekit.settings import settings_table

    print(settings_table(AggregatorSettings), end="")
    return 0
