"""In-process federations of chosen methods over in-memory splits, for method tests."""

from __future__ import annotations

from typing import Any

from msmtrec.data.dataset import ScenarioSplits
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import resolve_experiment
from msmtrec.federation.strategy import Strategy
from msmtrec.training.config import TrainConfig

TRAIN = TrainConfig(batch_size=256)


def clients_for(
    method: str, splits: dict[str, ScenarioSplits], seed: int = 0, **overrides: Any
) -> tuple[dict[str, ClientRuntime], Strategy]:
    """One runtime per scenario and the server, every client holding its initial payload."""
    fed, model_cfg = resolve_experiment(method, "small", overrides)
    clients = {
        s: ClientRuntime(s, sp, model_cfg, fed, TRAIN, seed) for s, sp in sorted(splits.items())
    }
    strategy = Strategy(fed, next(iter(clients.values())).model.state_dict())
    for s, c in clients.items():
        c.receive(strategy.payload(s), completed_rounds=0)
    return clients, strategy


def play_round(clients: dict[str, ClientRuntime], strategy: Strategy, r: int) -> dict:
    """Train every client, aggregate, hand each its next payload; returns the updates."""
    updates = {s: c.train_round(r)[0] for s, c in clients.items()}
    for s, payload in strategy.aggregate(list(updates.values())).items():
        clients[s].receive(payload, completed_rounds=r)
    return updates
