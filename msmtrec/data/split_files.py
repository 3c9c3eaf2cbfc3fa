"""One processed split file by suffix: which format it is, loading it, finding it in a folder."""

from __future__ import annotations

from pathlib import Path

from msmtrec.data.csv_reader import DEFAULT_CHUNK_BYTES, _load_csv
from msmtrec.data.dataset import ScenarioData
from msmtrec.data.parquet_reader import _load_parquet
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.validation import DataValidationError, _Plan

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataValidationError(
        path, f"unknown file type {suffix!r}: expected one of {CSV_SUFFIXES + PARQUET_SUFFIXES}"
    )


def load_split(
    path: Path | str, schema: FeatureSchema = ALIEXPRESS, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> ScenarioData:
    """Load one processed split file (``.csv`` or ``.parquet``) into validated arrays.

    Raises ``DataValidationError`` (file, row, column) on a missing column, a non-numeric
    cell, a missing cell, a non-integer or negative categorical id, a label outside {0, 1}
    or a chained label above its parent's (conversion > click). Ids ``>= vocab_size`` map to
    the OOV slot and are counted in ``oov_counts``; ids of hashed tables are hashed.
    """
    path = Path(path)
    kind = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    plan = _Plan(schema)
    if kind == "csv":
        return _load_csv(path, plan, chunk_bytes)
    return _load_parquet(path, plan)


def find_split_file(scenario_dir: Path | str, split: str) -> Path | None:
    """``<dir>/<split>.csv`` or ``<dir>/<split>.parquet``; an error if both exist, because
    silently picking one could train on stale data."""
    scenario_dir = Path(scenario_dir)
    found = [
        scenario_dir / f"{split}{suffix}"
        for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES
        if (scenario_dir / f"{split}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise DataValidationError(
            scenario_dir,
            f"several {split} files ({', '.join(p.name for p in found)}); keep exactly one",
        )
    return found[0] if found else None
