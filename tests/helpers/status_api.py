"""The aggregator's status API over a real in-process Federation, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aggregator.checkpoint import CheckpointStore
from aggregator.federation import Federation
from aggregator.status_api import StatusServer, create_app
from helpers.processes import free_port
from msmtrec.spec import FederationSpec


@contextmanager
def running_status_api(state_dir: Path, federation: Federation | None = None) -> Iterator[str]:
    """Serve ``federation`` (default: a fresh two-scenario one) and yield the base URL."""
    fed = federation or Federation(
        FederationSpec(rounds=1), ["A", "B"], CheckpointStore(state_dir / "ckpt")
    )
    port = free_port()
    server = StatusServer(create_app(fed), "127.0.0.1", port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def running_service(kind: str, state_dir: Path) -> Iterator[str]:
    """``gateway`` (over an empty registry) or ``status``: yields the base URL."""
    if kind == "gateway":
        from gateway_support import running_gateway

        with running_gateway(state_dir / "registry") as base:
            yield base
    else:
        with running_status_api(state_dir) as base:
            yield base
