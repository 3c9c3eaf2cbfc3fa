"""Processed Parquet splits, read one row group at a time (also for streaming readers)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import FeatureSchema
from msmtrec.data.sink import _Sink
from msmtrec.data.validation import _NULL_SET, DataValidationError, _check_columns, _Plan

_PARQUET_BATCH_ROWS = 65_536


def _numeric_column(path: Path, name: str, arr: pa.Array, first_row: int) -> np.ndarray:
    """A numeric numpy view of one parquet column batch; text columns are parsed (slowly,
    they are unusual) so a bad cell is reported with its row."""
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        if arr.null_count:
            if pa.types.is_floating(t):
                return arr.to_numpy(zero_copy_only=False)
            return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return arr.to_numpy(zero_copy_only=False)
    if pa.types.is_decimal(t):
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        values = np.empty(len(arr), dtype=np.float64)
        for i, text in enumerate(arr.to_pylist()):
            if text is None or text.strip() in _NULL_SET:
                values[i] = np.nan
                continue
            try:
                values[i] = float(text)
            except ValueError:
                raise DataValidationError(
                    path, f"non-numeric value {text!r}", row=first_row + i, column=name
                ) from None
        return values
    raise DataValidationError(path, f"column has non-numeric type {t}", column=name)


def open_parquet(path: Path, schema: FeatureSchema) -> tuple[pq.ParquetFile, dict[str, int]]:
    """The file and the positions of the schema's columns in it; an error names a file that
    is not Parquet or a missing column."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(path, f"not a readable Parquet file: {exc}") from exc
    return pf, _check_columns(path, _Plan(schema), pf.schema_arrow.names)


def read_row_group(
    pf: pq.ParquetFile,
    path: Path,
    schema: FeatureSchema,
    positions: Mapping[str, int],
    group: int,
    first_row: int,
    rows: tuple[int, int] | None = None,
) -> ScenarioData:
    """One row group (``rows``: a ``[lo, hi)`` slice of it), validated exactly as
    :func:`load_split` validates a whole file; ``first_row`` (the data rows of the file before
    this group) keeps error rows numbered as in the file. For streaming readers."""
    plan = _Plan(schema)
    required = list(plan.required)
    table = pf.read_row_group(group, columns=required)
    lo, hi = rows if rows is not None else (0, table.num_rows)
    if (lo, hi) != (0, table.num_rows):
        table = table.slice(lo, hi - lo)
    sink = _Sink(plan, table.num_rows, path, positions, first_row=first_row + lo)
    for batch in table.to_batches(max_chunksize=_PARQUET_BATCH_ROWS):
        cols = {
            name: _numeric_column(path, name, batch.column(name), first_row + lo + sink.n + 1)
            for name in required
        }
        sink.add(cols, batch.num_rows)
    return sink.result()


def _load_parquet(path: Path, plan: _Plan) -> ScenarioData:
    pf, positions = open_parquet(path, plan.schema)
    sink = _Sink(plan, pf.metadata.num_rows, path, positions)
    required = list(plan.required)
    # Row group by row group: ``iter_batches`` reads far ahead (the whole file in pyarrow 26),
    # while one row group at a time bounds memory to one group (ours are 65,536 rows).
    for group in range(pf.num_row_groups):
        table = pf.read_row_group(group, columns=required)
        for batch in table.to_batches(max_chunksize=_PARQUET_BATCH_ROWS):
            cols = {
                name: _numeric_column(path, name, batch.column(name), sink.n + 1)
                for name in required
            }
            sink.add(cols, batch.num_rows)
        del table
    pa.default_memory_pool().release_unused()
    return sink.result()
