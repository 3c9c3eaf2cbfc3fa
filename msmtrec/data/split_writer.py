"""Writing one processed split (CSV or Parquet) atomically, in processed column order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.data.split_files import _format_of

_WRITE_BATCH_ROWS = 65_536


def _batch_table(
    data: ScenarioData, ids: np.ndarray, schema: FeatureSchema, a: int, b: int
) -> pa.Table:
    cols: dict[str, pa.Array] = {schema.id_column: pa.array(ids[a:b])}
    for j, name in enumerate(schema.categorical):
        cols[name] = pa.array(np.ascontiguousarray(data.categorical[a:b, j]))
    for j, name in enumerate(schema.numerical):
        cols[name] = pa.array(np.ascontiguousarray(data.numerical[a:b, j], dtype=np.float32))
    for j, name in enumerate(schema.labels):
        cols[name] = pa.array(np.ascontiguousarray(data.labels[a:b, j], dtype=np.uint8))
    return pa.table(cols)


def _empty_table(schema: FeatureSchema, data: ScenarioData) -> pa.Table:
    return _batch_table(data, np.zeros(0, dtype=np.int64), schema, 0, 0)


def write_split(
    data: ScenarioData,
    path: Path | str,
    schema: FeatureSchema = ALIEXPRESS,
    search_ids: np.ndarray | Sequence[int] | None = None,
) -> None:
    """Write one split in processed column order (id, categoricals, numericals, labels), as
    CSV or Parquet by suffix. Written to a temporary file and renamed, so a reader never sees
    half a file. ``search_ids`` default to 0..n-1. It writes the arrays as loaded: for a
    hashed table these are bucket numbers, which loading would hash again, so files of
    hashed specs come from their preparers (raw ids), not from here."""
    path = Path(path)
    kind = _format_of(path)
    n = len(data)
    if data.categorical.shape[1:] != (schema.num_categorical,) or data.numerical.shape[1:] != (
        schema.num_numerical,
    ):
        raise ValueError("data does not match the schema's feature counts")
    ids = (
        np.arange(n, dtype=np.int64)
        if search_ids is None
        else np.asarray(search_ids, dtype=np.int64)
    )
    if len(ids) != n:
        raise ValueError(f"search_ids has {len(ids)} entries for {n} rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrow_schema = _empty_table(schema, data).schema
    try:
        if kind == "csv":
            options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
            with pacsv.CSVWriter(str(tmp), arrow_schema, write_options=options) as writer:
                for a in range(0, n, _WRITE_BATCH_ROWS):
                    b = min(n, a + _WRITE_BATCH_ROWS)
                    writer.write_table(_batch_table(data, ids, schema, a, b))
        else:
            with pq.ParquetWriter(str(tmp), arrow_schema, compression="zstd") as writer:
                for a in range(0, n, _WRITE_BATCH_ROWS):
                    writer.write_table(
                        _batch_table(data, ids, schema, a, min(n, a + _WRITE_BATCH_ROWS)),
                        row_group_size=_WRITE_BATCH_ROWS,
                    )
                if n == 0:
                    writer.write_table(_empty_table(schema, data))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
