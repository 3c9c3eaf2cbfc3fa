"""``msmtrec gateway``: serve every scenario of a model registry over HTTP."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="serve per-scenario CTR/CTCVR predictions from a model registry",
        description="FastAPI prediction gateway over a model registry (msmtrec simulate "
        "--publish-to, or the federation's scenario clients). Flags override "
        "MSMTREC_GATEWAY_* environment variables. See docs/GATEWAY.md.",
    )
    p.add_argument("--registry", type=Path, default=None, help="registry root directory")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--max-batch", type=int, default=None, help="instances per request (1000)")
    p.add_argument("--poll-interval", type=float, default=None, help="seconds between scans (2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1)")
    p.add_argument("--workers", type=int, default=None, help="inference threads, 0 = inline (2)")
    p.add_argument("--engine", choices=("compiled", "eager"), default=None)
    p.add_argument("--schema-file", type=Path, default=None, help="JSON feature schema")
    p.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


SETTING_FLAGS = ("registry", "host", "port", "max_batch", "poll_interval", "threads", "workers",
                 "engine", "schema_file", "log_level")  # fmt: skip


def settings_from_args(args: argparse.Namespace):
    """Flags given on the command line win over MSMTREC_GATEWAY_* variables and defaults."""
    from gateway.settings import GatewaySettings
    from servicekit.settings import check_environment

    check_environment(GatewaySettings)
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    return GatewaySettings(**overrides)


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from gateway.app import create_app
    from servicekit.http_limits import BoundedHttpToolsProtocol

    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"msmtrec gateway: invalid settings: {exc}")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # per-request log lines cost more than the forward at small batch
        loop="auto",  # uvloop when installed
        http=BoundedHttpToolsProtocol,  # httptools, with a bound on the request head
    )
    return 0
