"""Partial participation: which clients take part in a round, the same in every process.

Why a pure function of (scenarios, round, seed, configuration): the in-process simulation
and the networked aggregator must pick the same clients for the same round, and a restarted
aggregator must pick again exactly what it picked before, with nothing stored. The sample
is drawn with Python's ``random.Random`` seeded by a string (hashed with SHA-512, so it does
not depend on ``PYTHONHASHSEED`` or the process), from the scenarios in sorted order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from msmtrec.federation.config import FederationConfig


def clients_per_round(config: FederationConfig, population: int) -> int:
    """How many of ``population`` clients a round samples (all of them by default)."""
    if population < 1:
        raise ValueError("a federation needs at least one client")
    if config.clients_per_round is not None:
        return min(population, config.clients_per_round)
    if config.client_fraction is not None:
        return max(1, min(population, math.ceil(config.client_fraction * population)))
    return population


def round_participants(
    scenarios: Iterable[str], round_number: int, seed: int, config: FederationConfig
) -> tuple[str, ...]:
    """The clients sampled for ``round_number`` (1-based), sorted; every scenario when the
    configuration samples none out."""
    population = sorted(set(scenarios))
    k = clients_per_round(config, len(population))
    if k >= len(population):
        return tuple(population)
    rng = random.Random(f"msmtrec-participants:{seed}:{round_number}")
    return tuple(sorted(rng.sample(population, k)))
