"""Shared fixtures: small synthetic scenario splits built in memory (no files needed)."""

from __future__ import annotations

import os

# What the `msmtrec` entry point sets (msmtrec_app.cli.apply_process_defaults): the suite runs
# torch in-process on shared cores. Before numpy/torch load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.schema import ALIEXPRESS


def make_data(n: int, rng: np.random.Generator, weights: np.ndarray) -> ScenarioData:
    cat = np.stack([rng.integers(0, v, n) for v in ALIEXPRESS.vocab_sizes], 1).astype(np.int16)
    num = rng.random((n, ALIEXPRESS.num_numerical), dtype=np.float32)
    logit = num @ weights - 2.0 + (cat[:, 4] % 3 - 1) * 0.8
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    conv = click & (rng.random(n) < 0.2 + 0.5 * (num[:, 0] > 0.5))
    return ScenarioData(cat, num, np.stack([click, conv], 1).astype(np.uint8))


def make_splits(
    num_scenarios: int = 3, rows: int = 4000, seed: int = 0
) -> dict[str, ScenarioSplits]:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, ALIEXPRESS.num_numerical).astype(np.float32)
    out = {}
    for i in range(num_scenarios):
        w = base + rng.normal(0, 0.5, ALIEXPRESS.num_numerical).astype(np.float32)
        train, valid = make_data(rows, rng, w).split_tail(0.1)
        out[f"S{i}"] = ScenarioSplits(
            f"S{i}", train, valid, make_data(rows // 4, rng, w), ALIEXPRESS
        )
    return out


@pytest.fixture(scope="session")
def small_splits() -> dict[str, ScenarioSplits]:
    return make_splits()


@pytest.fixture
def processes(tmp_path):
    """Launch ``msmtrec`` subprocesses; every one is stopped when the test ends."""
    from helpers.processes import ProcessGroup

    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """CLI entry points run in-process by tests may pin torch's intra-op threads
    (``--threads``); restore them so later tests (bit-pinned digests among them) see
    torch's default again."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
