"""The oracle side file of synthetic data: the true probabilities of every test row.

A synthetic generator knows P(click | x) and P(click and purchase | x) of each row it draws.
Writing them next to the test file lets a benchmark measure how far a model is from the best
possible one (the oracle's AUC or log-loss on the same rows) instead of only comparing models
with each other. The file is ``<data>/<scenario>/test.oracle.parquet``, columns ``p_click``
and ``p_conversion`` (float64), one row per test row in the test file's order. Its name is
not ``test.<csv|parquet>``, so the split loaders (which look for exactly those names) never
take it for a split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ORACLE_COLUMNS", "ORACLE_FILE", "load_oracle", "oracle_path", "write_oracle"]

ORACLE_FILE = "test.oracle.parquet"
ORACLE_COLUMNS = ("p_click", "p_conversion")


def oracle_path(data_dir: Path | str, scenario: str) -> Path:
    """Where the oracle side file of ``scenario`` lives."""
    return Path(data_dir) / scenario / ORACLE_FILE


def _check(probs: np.ndarray, where: Path | str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"{where}: oracle probabilities must have shape (n, 2), got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError(f"{where}: oracle probabilities must be finite and in [0, 1]")
    if (probs[:, 1] > probs[:, 0]).any():
        raise ValueError(f"{where}: p_conversion exceeds p_click (a conversion needs a click)")
    return probs


def write_oracle(directory: Path | str, probs: np.ndarray) -> Path:
    """Write ``<directory>/test.oracle.parquet`` from ``probs`` (n, 2) = (P(click),
    P(click and purchase)). Written to a temporary file and renamed, like the splits."""
    path = Path(directory) / ORACLE_FILE
    probs = _check(probs, path)
    table = pa.table(
        {
            ORACLE_COLUMNS[0]: pa.array(np.ascontiguousarray(probs[:, 0])),
            ORACLE_COLUMNS[1]: pa.array(np.ascontiguousarray(probs[:, 1])),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, str(tmp), compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_oracle(data_dir: Path | str, scenario: str) -> np.ndarray:
    """True (P(click), P(click and purchase)) of every test row of ``scenario``: float64 array
    of shape (n_test, 2) in the test file's row order. Raises FileNotFoundError naming the
    path when the data has no oracle (real data, or made by an older generator)."""
    path = oracle_path(data_dir, scenario)
    if not path.is_file():
        raise FileNotFoundError(
            f"no oracle side file {path}: only synthetic data made by `msmtrec data synth` has one"
        )
    table = pq.read_table(str(path))
    missing = [c for c in ORACLE_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(ORACLE_COLUMNS)}")
    probs = np.stack(
        [table.column(c).to_numpy().astype(np.float64) for c in ORACLE_COLUMNS], axis=1
    )
    return _check(probs.reshape(-1, 2), path)
