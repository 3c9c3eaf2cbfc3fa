"""``msmtrec gateway``: serve every scenario of a model registry over HTTP."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from gateway.settings import GatewaySettings
    from servicekit.settings import add_service_arguments

    p = sub.add_parser(
        "gateway",
        allow_abbrev=False,
        help="serve per-scenario CTR/CTCVR predictions from a model registry",
        description="FastAPI prediction gateway over a model registry (msmtrec simulate "
        "--publish-to, or the federation's scenario clients). Settings: flag > env "
        "MSMTREC_GATEWAY_* > --config file > default. See docs/GATEWAY.md.",
    )
    add_service_arguments(p, GatewaySettings)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """Flags given on the command line win over MSMTREC_GATEWAY_* variables, the --config
    file and the defaults."""
    from gateway.settings import GatewaySettings
    from servicekit.settings import load_settings, overrides_from_args

    return load_settings(GatewaySettings, getattr(args, "config", None), overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from gateway.app import create_app
    from msmtrec.device import resolve_device
    from servicekit.http_limits import BoundedHttpToolsProtocol

    try:
        settings = settings_from_args(args)
        # CUDA asked for where there is none: exit 2 now, not at the first load
        resolve_device(settings.device, "device (MSMTREC_GATEWAY_DEVICE)")
    except (ValidationError, ValueError, OSError) as exc:
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
