"""The ``on_round`` hook that publishes every client's model after each simulated round."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from msmtrec.registry.layout import (
    DEFAULT_RETENTION,
)
from msmtrec.registry.store import ModelRegistry

if TYPE_CHECKING:
    from msmtrec.federation.client import ClientRuntime
    from msmtrec.simulation import SimulationConfig


def publisher_for_simulation(
    root: Path | str,
    sim_config: SimulationConfig,
    retention: int = DEFAULT_RETENTION,
    policy: str = "latest",
) -> Callable[[int, dict[str, ClientRuntime]], None]:
    """An ``on_round`` hook for :func:`msmtrec.simulation.run_simulation` that publishes every
    client's personalized model after each round, with its validation and test metrics
    (``policy`` as in :meth:`ModelRegistry.publish`)."""
    registry = ModelRegistry(root, retention=retention)
    extra = {
        "source": "simulation",
        "method": sim_config.method,
        "preset": sim_config.preset,
        "seed": sim_config.seed,
    }

    def on_round(round_number: int, clients: dict[str, ClientRuntime]) -> None:
        for scenario, runtime in clients.items():
            metrics = {"valid": runtime.evaluate("valid"), "test": runtime.evaluate("test")}
            start = time.perf_counter()
            version = registry.publish(
                scenario, runtime, round=round_number, metrics=metrics, extra=extra,
                policy=policy,
            )  # fmt: skip
            print(
                f"published {scenario} {version} to {registry.root} "
                f"({time.perf_counter() - start:.2f}s)"
            )

    return on_round
