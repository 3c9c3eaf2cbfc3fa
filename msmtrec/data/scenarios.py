"""Scenarios of a data directory: listing them, loading one as train/valid/test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msmtrec.data.csv_reader import _read_header
from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.split_files import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    _format_of,
    find_split_file,
    load_split,
)
from msmtrec.data.validation import DataValidationError


def scenario_column_values(path: Path | str, column: str) -> np.ndarray:
    """One column of a split file as strings (object array), for a spec whose scenarios come
    from a column: only that column is read."""
    path = Path(path)
    kind = _format_of(path)
    if kind == "parquet":
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataValidationError(path, f"not a readable Parquet file: {exc}") from exc
    else:
        names = _read_header(path)[0]
    if column not in names:
        raise DataValidationError(
            path, "missing the scenario column named by the spec", column=column
        )
    if kind == "parquet":
        table = pq.read_table(path, columns=[column])
    else:
        convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()})
        table = pacsv.read_csv(path, convert_options=convert)
    values = table.column(column).cast(pa.string())
    if values.null_count:
        row = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False))) + 1
        raise DataValidationError(path, "missing scenario name", row=row, column=column)
    return np.asarray(values.to_pylist(), dtype=object)


def _split_files(directory: Path, whose: str) -> dict[str, Path]:
    """{"train": path, "test": path} in ``directory``; ``whose`` opens the error message."""
    files = {}
    for split in ("train", "test"):
        found = find_split_file(directory, split)
        if found is None:
            raise FileNotFoundError(f"{whose}: no {split}.csv or {split}.parquet in {directory}")
        files[split] = found
    return files


def _scenario_files(data_dir: Path) -> dict[str, Path]:
    return _split_files(data_dir, "the spec's scenarios come from a column")


def list_scenarios(data_dir: Path | str, schema: FeatureSchema | None = None) -> list[str]:
    """Sorted names of the subdirectories of ``data_dir`` that hold a train file; for a
    schema whose scenarios come from a column, the sorted values of that column in
    ``data_dir/train.*``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    if schema is not None and schema.scenario_column is not None:
        train = _scenario_files(data_dir)["train"]
        return sorted(set(scenario_column_values(train, schema.scenario_column).tolist()))
    names = []
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and any(
            (child / f"train{suffix}").is_file() for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES
        ):
            names.append(child.name)
    return names


def _oov_of(data: ScenarioData, schema: FeatureSchema) -> np.ndarray:
    vocab = np.asarray(schema.vocab_sizes, dtype=data.categorical.dtype)
    return (data.categorical == vocab).sum(axis=0, dtype=np.int64)


def load_scenario(
    data_dir: Path | str,
    scenario: str,
    schema: FeatureSchema = ALIEXPRESS,
    valid_fraction: float = 0.1,
) -> ScenarioSplits:
    """Train/valid/test of one scenario. Files are time ordered, so valid is the newest
    ``valid_fraction`` of train: selecting on it never peeks at test.

    With a schema whose scenarios come from a column, ``data_dir/{train,test}.*`` hold every
    scenario: each file is loaded and validated whole (errors keep the file's row numbers),
    then the rows whose column equals ``scenario`` are kept, in file order."""
    if schema.scenario_column is not None:
        return _load_scenario_by_column(Path(data_dir), scenario, schema, valid_fraction)
    scenario_dir = Path(data_dir) / scenario
    if not scenario_dir.is_dir():
        raise FileNotFoundError(f"scenario directory not found: {scenario_dir}")
    files = _split_files(scenario_dir, f"scenario '{scenario}'")
    full_train = load_split(files["train"], schema)
    test = load_split(files["test"], schema)
    if len(full_train) < 2:
        raise DataValidationError(files["train"], "needs at least 2 rows to hold out validation")
    train, valid = full_train.split_tail(valid_fraction)
    train.oov_counts = _oov_of(train, schema)
    valid.oov_counts = _oov_of(valid, schema)
    return ScenarioSplits(name=scenario, train=train, valid=valid, test=test, schema=schema)


def _load_scenario_by_column(
    data_dir: Path, scenario: str, schema: FeatureSchema, valid_fraction: float
) -> ScenarioSplits:
    column = schema.scenario_column
    assert column is not None
    parts = {}
    for split, path in _scenario_files(data_dir).items():
        keep = scenario_column_values(path, column) == scenario
        if not keep.any():
            raise DataValidationError(
                path, f"no row of scenario {scenario!r} in the scenario column", column=column
            )
        data = load_split(path, schema)
        parts[split] = ScenarioData(data.categorical[keep], data.numerical[keep], data.labels[keep])
        parts[split].oov_counts = _oov_of(parts[split], schema)
    full_train, test = parts["train"], parts["test"]
    if len(full_train) < 2:
        raise DataValidationError(
            data_dir, f"scenario {scenario!r} needs at least 2 train rows to hold out validation"
        )
    train, valid = full_train.split_tail(valid_fraction)
    train.oov_counts = _oov_of(train, schema)
    valid.oov_counts = _oov_of(valid, schema)
    return ScenarioSplits(name=scenario, train=train, valid=valid, test=test, schema=schema)
