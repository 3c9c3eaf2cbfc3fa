"""Helpers for the registry and gateway tests: real models, a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import contextlib
import csv
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.model import MultiTaskMMoE, build_model, preset
from servicekit.http_limits import BoundedHttpToolsProtocol

FIXTURES = Path(__file__).parent / "fixtures" / "aliexpress_sample"


def trained_like_model(seed: int, preset_name: str = "small", **overrides: Any) -> MultiTaskMMoE:
    """A model whose every part is non-trivial (W_S, W_T, BN statistics), like a trained one,
    so folding mistakes in the serving engine cannot hide behind zeros."""
    model = build_model(ALIEXPRESS, preset(preset_name, **overrides), seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model.eval()


def fixture_instances(split: str = "test") -> list[dict[str, Any]]:
    """The real AliExpress rows as JSON instances (extra columns such as search_id and the
    labels are sent too: the gateway ignores keys it does not need)."""
    with open(FIXTURES / f"{split}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        inst: dict[str, Any] = {}
        for key, value in row.items():
            inst[key] = float(value) if key.startswith("numerical_") else int(float(value))
        out.append(inst)
    return out


def instances_to_tensors(instances: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    cat = torch.tensor(
        [[min(inst[c], v) for c, v in zip(ALIEXPRESS.categorical, ALIEXPRESS.vocab_sizes,
                                          strict=True)] for inst in instances]
    )  # fmt: skip
    num = torch.tensor([[inst[c] for c in ALIEXPRESS.numerical] for inst in instances])
    return cat, num.float()


def eager_probs(model: MultiTaskMMoE, instances: list[dict[str, Any]]) -> torch.Tensor:
    cat, num = instances_to_tensors(instances)
    model.eval()
    with torch.inference_mode():
        return torch.sigmoid(model(cat, num))


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_gateway(registry: Path, **settings: Any) -> Iterator[str]:
    """A real uvicorn serving ``create_app`` on 127.0.0.1 in a thread; yields the base URL."""
    settings.setdefault("poll_interval", 0.1)
    cfg = GatewaySettings(registry=registry, **settings)
    app = create_app(cfg)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            http=BoundedHttpToolsProtocol,  # as gateway/cli.py serves it
        )
    )  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def wait_ready(client: httpx.Client, timeout: float = 20.0) -> dict:
    wait_until(lambda: client.get("/readyz").status_code == 200, timeout)
    return client.get("/readyz").json()
