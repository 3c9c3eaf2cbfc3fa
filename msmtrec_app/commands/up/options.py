"""The flags of ``msmtrec up`` and their checks (the sequence is :mod:`.session`'s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from msmtrec.federation.config import DEFAULT_METHOD
from msmtrec_app.cli import add_device_flags, device_arg
from msmtrec_app.commands.up.ports import DEFAULT_PORTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="run the whole system as local processes: aggregator, one client per scenario, "
        "gateway (synthetic data unless --data)",
        description="Starts `msmtrec aggregator`, one `msmtrec client` per scenario and "
        "`msmtrec gateway` on 127.0.0.1, prints per-round progress, then one example "
        "prediction per scenario and the URLs of the status API and the gateway. Keeps "
        "serving until Ctrl-C (or exits after training with --exit-after-training). Logs "
        "and state go to --run-dir; each run starts a fresh federation there.",
    )
    p.add_argument(
        "--run-dir", type=Path, default=Path("runs/up"), help="data, logs, state and secrets"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data directory of <scenario>/{train,test} files (default: synthetic data "
        "written to RUN_DIR/data)",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        help="scenarios to run (default: NL ES FR US, or every scenario under --data)",
    )
    p.add_argument(
        "--spec",
        dest="dataset",
        default=None,
        metavar="NAME|PATH",
        help="dataset spec of --data: built-in aliexpress (default) or tenrec, or a TOML/YAML "
        "spec file; the aggregator, every client and the gateway use it",
    )
    p.add_argument("--rows", type=int, default=20_000, help="synthetic train rows per scenario")
    p.add_argument("--test-rows", type=int, default=None, help="synthetic test rows (rows / 4)")
    p.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        type=networked_method,
        help=f"federation method (default {DEFAULT_METHOD})",
    )
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the federation")
    p.add_argument(
        "--lr", type=float, default=None, help="client learning rate (default: the method's)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="client batch size (default: the method's)"
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="local epochs per round (default: the method's)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address of every service (default loopback)"
    )
    for name, default in DEFAULT_PORTS.items():
        p.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"port (default {default}, or a free one if {default} is busy; 0: a free one)",
        )
    p.add_argument("--tls", action="store_true", help="TLS between clients and aggregator")
    p.add_argument(
        "--tokens-dir",
        type=Path,
        default=None,
        help="tokens.yaml + <scenario>.token as `msmtrec aggregator make-tokens` writes them "
        "(default: fresh random dev tokens in RUN_DIR/secrets)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="prepare data and secrets, write every child's config file (RUN_DIR/config, "
        "each validated with that service's settings model) and print the command lines; "
        "start nothing",
    )
    p.add_argument(
        "--exit-after-training",
        action="store_true",
        help="stop everything and exit 0 once the example predictions are printed",
    )
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds (default 180)")
    p.add_argument(
        "--round-timeout",
        type=float,
        default=300.0,
        help="longest wait for the next round to complete (default 300 s)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    p.add_argument(
        "--stream-buffer-rows",
        type=int,
        default=0,
        help="> 0: each client streams its Parquet train split through a shuffle buffer of "
        "this many rows (data larger than memory); 0: in memory (default)",
    )
    add_device_flags(p)
    p.add_argument(
        "--gateway-device", type=device_arg, default="cpu",
        help="where the gateway's engine runs: auto, cpu, cuda or cuda:N (default cpu)",
    )  # fmt: skip
    from msmtrec_app.commands.simulate import add_privacy_args

    add_privacy_args(p)  # handed to every client (each protects its own rows)
    p.add_argument("--verbose", action="store_true", help="stream every log line of every process")
    from msmtrec_app.commands.up.session import run

    p.set_defaults(func=run)


def networked_method(name: str) -> str:
    """A method the aggregator can run (central references are refused, saying why)."""
    from msmtrec.federation.methods import check_networked

    try:
        check_networked(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name
