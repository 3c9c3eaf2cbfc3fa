"""Read and write processed scenario files (CSV or Parquet) as validated ``ScenarioData``.

Why it is built this way:

* Files hold up to tens of millions of rows, so the happy path has no per-row Python work:
  CSV text is cut into line-aligned byte chunks, each chunk is parsed by ``pyarrow`` (multi
  threaded) and converted column by column into arrays preallocated at their final size.
  Peak memory is the final arrays plus one chunk.
* A bad file must say *where* it is bad. Vectorized checks find the first bad row of a chunk;
  when pyarrow cannot even parse a chunk, a slow pure-Python pass over that chunk only finds
  the exact row and column. ``DataValidationError`` names the file, the 1-based data row
  (header excluded, blank lines not counted) and the column.
* Columns are matched by name, so extra columns are ignored and column order is free.
* Vocabulary sizes come from the schema: ids ``>= vocab_size`` go to the out-of-vocabulary
  slot ``vocab_size`` and are counted per field. Features of a *hashed* table (a spec's
  ``hash_buckets``) hold raw ids of any size; they are mapped into the table by
  ``msmtrec.data.hashing.hash_ids``, the function the gateway uses, so an id lands in the same
  row at training and at serving time. (CSV ids are parsed as float64: exact below 2**53.)
* Numericals get the spec's normalization (``log1p`` needs values > -1; ``standard`` is
  ``(x - mean) / std``); AliExpress has none, so its arrays are the file's values, bit for bit.
* Chained tasks (a spec's ``parent``: ESMM's ``ctcvr = ctr x cvr``) must have a label no
  larger than the parent's. The AliExpress layout (tasks ``ctr``, ``ctcvr`` with no parent
  declared) keeps its implicit chain: conversion cannot exceed click.
"""

from __future__ import annotations

import csv
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.hashing import hash_ids
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema

__all__ = [
    "CSV_SUFFIXES",
    "PARQUET_SUFFIXES",
    "DataValidationError",
    "find_split_file",
    "iter_line_chunks",
    "label_chains",
    "list_scenarios",
    "load_scenario",
    "load_split",
    "open_parquet",
    "read_row_group",
    "scenario_column_values",
    "write_split",
]

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")

# Cell texts read as "missing". The same list drives pyarrow and the diagnostic pass, so both
# agree on what an empty/NaN cell is.
NULL_TOKENS: tuple[str, ...] = (
    "", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "-NaN", "NULL", "null", "None", "#N/A",
)  # fmt: skip
_NULL_SET = frozenset(NULL_TOKENS)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

DEFAULT_CHUNK_BYTES = 4 << 20  # CSV text per pyarrow call: bounds the parser's memory
_PARQUET_BATCH_ROWS = 65_536
_PIPELINE_DEPTH = 1  # chunks parsed ahead of the one being converted
_WRITE_BATCH_ROWS = 65_536


class DataValidationError(ValueError):
    """A data file breaks the schema. The message names the file, the 1-based data row (when
    the problem is in one row) and the column, so a user can open the file and fix it."""

    def __init__(
        self, path: Path | str, problem: str, *, row: int | None = None, column: str | None = None
    ) -> None:
        self.path = Path(path)
        self.row = row
        self.column = column
        self.problem = problem
        where = [str(path)]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(", ".join(where) + ": " + problem)


# --------------------------------------------------------------------------------------------
# Column plan and the vectorized sink


@dataclass(frozen=True)
class _Plan:
    """Required columns of a schema and what each one must hold."""

    schema: FeatureSchema

    @property
    def required(self) -> tuple[str, ...]:
        s = self.schema
        return (*s.categorical, *s.numerical, *s.labels)

    def kind(self, name: str) -> str:
        s = self.schema
        if name in s.labels:
            return "label"
        if name in s.categorical:
            return "categorical"
        return "numerical"

    @property
    def chains(self) -> tuple[tuple[int, int], ...]:
        """(child label index, parent label index) pairs whose child label must not exceed
        its parent's."""
        return label_chains(self.schema)

    def csv_types(self) -> dict[str, pa.DataType]:
        # Categoricals and labels are parsed as float64 so "3.0" is accepted and "1.5" is
        # reported by a vectorized check (with its row) instead of failing the whole chunk.
        s = self.schema
        types: dict[str, pa.DataType] = {c: pa.float64() for c in s.categorical}
        types.update({c: pa.float32() for c in s.numerical})
        types.update({c: pa.float64() for c in s.labels})
        return types


def categorical_dtype(schema: FeatureSchema) -> np.dtype:
    """int16 for the tiny AliExpress vocabularies; int32 only if a schema needs it."""
    return (
        np.dtype(np.int16)
        if max(schema.table_sizes, default=0) <= np.iinfo(np.int16).max
        else np.dtype(np.int32)
    )


def label_chains(schema: FeatureSchema) -> tuple[tuple[int, int], ...]:
    """(child, parent) label indices of the schema's product chains. A schema that declares
    no parent but has the AliExpress tasks (``ctr``, ``ctcvr``) keeps the implicit chain of
    its second label (conversion = clicked and purchased) on its first (click)."""
    pairs = tuple(
        (t, schema.tasks.index(p)) for t, p in enumerate(schema.task_parents) if p is not None
    )
    if not pairs and schema.tasks[:2] == ("ctr", "ctcvr"):
        pairs = ((1, 0),)
    return pairs


def _conversion_message(click: str, conv: str) -> str:
    return (
        f"{conv}=1 but {click}=0 ({conv} marks clicked-and-purchased impressions, so it "
        f"cannot exceed {click})"
    )


def _chain_message(schema: FeatureSchema, child: int, parent: int) -> str:
    if schema.tasks[:2] == ("ctr", "ctcvr") and (child, parent) == (1, 0):
        return _conversion_message(schema.labels[0], schema.labels[1])
    c, p = schema.labels[child], schema.labels[parent]
    return (
        f"{c}=1 but {p}=0 (task {schema.tasks[child]!r} is chained on "
        f"{schema.tasks[parent]!r}: its label cannot exceed its parent's)"
    )


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _fmt(v: float) -> str:
    """2.0 -> '2', 2.5 -> '2.5': ids and labels read as floats print like the file."""
    return repr(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) < 1e15 else repr(v)


class _Sink:
    """Preallocated output arrays filled chunk by chunk; grows only if the row count was
    underestimated (never on the normal path, where it is counted exactly first)."""

    def __init__(
        self,
        plan: _Plan,
        capacity: int,
        path: Path,
        positions: Mapping[str, int],
        first_row: int = 0,
    ):
        s = plan.schema
        self.plan = plan
        self.path = path
        self.positions = positions
        self.first_row = first_row  # data rows of the file before this sink's first row
        self.n = 0
        self.cat = np.empty((capacity, s.num_categorical), dtype=categorical_dtype(s))
        self.num = np.empty((capacity, s.num_numerical), dtype=np.float32)
        self.lab = np.empty((capacity, s.num_tasks), dtype=np.uint8)
        self.oov = np.zeros(s.num_categorical, dtype=np.int64)
        self.vocab = np.asarray(s.vocab_sizes, dtype=np.int64)
        self.hashed = tuple(s.tables[t].hashed for t in s.feature_tables)
        self.cat_index = {c: j for j, c in enumerate(s.categorical)}
        self.num_index = {c: j for j, c in enumerate(s.numerical)}
        self.lab_index = {c: j for j, c in enumerate(s.labels)}

    def _reserve(self, rows: int) -> None:
        need = self.n + rows
        if need <= len(self.cat):
            return
        cap = max(need, 2 * len(self.cat))
        for name in ("cat", "num", "lab"):
            old = getattr(self, name)
            new = np.empty((cap, old.shape[1]), dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add(self, columns: Mapping[str, np.ndarray], rows: int) -> None:
        """Validate one chunk (numpy arrays, NaN = missing) and append it. On a problem raise
        the one with the smallest (row, file column) of the chunk."""
        self._reserve(rows)
        a, b = self.n, self.n + rows
        problems: list[tuple[int, int, str, str]] = []

        def report(name: str, kind: str, bad: np.ndarray) -> None:
            i = _first(bad)
            message = _value_problem(kind, float(columns[name][i])) or "invalid value"
            problems.append((i, self.positions.get(name, 0), name, message))

        s = self.plan.schema
        for j, name in enumerate(s.categorical):
            v = columns[name]
            if v.dtype.kind == "b":
                v = v.astype(np.int8)
            if v.dtype.kind == "f":
                bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0)  # NaN: not finite
            elif v.dtype.kind == "i":
                bad = v < 0
            else:
                bad = None
            if bad is not None and bad.any():
                report(name, "categorical", bad)
                continue
            vocab = int(self.vocab[j])
            if self.hashed[j]:
                self.cat[a:b, j] = hash_ids(v, vocab)
                continue
            n_over = int(np.count_nonzero(v >= vocab))
            self.cat[a:b, j] = np.minimum(v, vocab) if n_over else v
            self.oov[j] += n_over

        for j, name in enumerate(s.numerical):
            v = columns[name]
            v32 = v if v.dtype == np.float32 else v.astype(np.float32)
            bad = ~np.isfinite(v32)  # NaN (missing), inf, or beyond float32's range
            if bad.any():
                report(name, "numerical", bad)
                continue
            norm = s.normalization[j]
            if norm == "none":
                self.num[a:b, j] = v32
            elif norm == "log1p":
                low = v32 <= -1.0
                if low.any():
                    i = _first(low)
                    message = f"log1p normalization needs values > -1, got {float(v32[i])}"
                    problems.append((i, self.positions.get(name, 0), name, message))
                    continue
                self.num[a:b, j] = np.log1p(v32)
            else:  # standard
                mean, std = s.numerical_stats[j] or (0.0, 1.0)
                self.num[a:b, j] = (v32.astype(np.float64) - mean) / std

        labels_ok = True
        for j, name in enumerate(s.labels):
            v = columns[name]
            bad = (v != 0) & (v != 1)  # NaN compares unequal: reported as missing
            if bad.any():
                report(name, "label", bad)
                labels_ok = False
                continue
            self.lab[a:b, j] = v
        if labels_ok:
            for child, parent in self.plan.chains:
                viol = self.lab[a:b, child] > self.lab[a:b, parent]
                if viol.any():
                    name = s.labels[child]
                    message = _chain_message(s, child, parent)
                    problems.append((_first(viol), self.positions.get(name, 0), name, message))

        if problems:
            i, _, name, message = min(problems, key=lambda p: (p[0], p[1]))
            row = self.first_row + a + i + 1
            raise DataValidationError(self.path, message, row=row, column=name)
        self.n = b

    def result(self) -> ScenarioData:
        n = self.n
        if n == len(self.cat):
            cat, num, lab = self.cat, self.num, self.lab
        else:  # views: an overestimated capacity costs untouched (uncommitted) pages only
            cat, num, lab = self.cat[:n], self.num[:n], self.lab[:n]
        return ScenarioData(cat, num, lab, oov_counts=self.oov.copy())


# --------------------------------------------------------------------------------------------
# Slow diagnostic pass (only on a chunk pyarrow could not parse)


def _value_problem(kind: str, v: float) -> str | None:
    """What is wrong with a parsed value of a column of this kind, or None. Shared by the
    vectorized path and the diagnostic pass, so both report the same words."""
    if math.isnan(v):
        return "missing value (empty or NaN)"
    if kind == "numerical":
        if math.isinf(v):
            return f"non-finite value {v}"
        if abs(v) > _FLOAT32_MAX:
            return f"value {v} overflows float32"
    elif kind == "categorical":
        if math.isinf(v):
            return f"non-finite value {v} in a categorical column"
        if not v.is_integer():
            return f"non-integer value {v} in a categorical column"
        if v < 0:
            return f"negative categorical id {_fmt(v)}"
    elif v not in (0.0, 1.0):
        return f"label must be 0 or 1, got {_fmt(v)}"
    return None


def _check_cell(kind: str, text: str) -> tuple[str | None, float]:
    """Classify one CSV cell exactly like the vectorized path would: (problem, value)."""
    if text in _NULL_SET:
        return "missing value (empty or NaN)", math.nan
    try:
        v = float(text)
    except ValueError:
        return f"non-numeric value {text!r}", math.nan
    return _value_problem(kind, v), v


def _diagnose_rows(
    rows: Iterator[list[str]],
    header: Sequence[str],
    plan: _Plan,
    positions: Mapping[str, int],
    first_row: int,
) -> tuple[int, str, str] | None:
    """First (row, column, problem) among ``rows`` (numbered from ``first_row``), or None."""
    ordered = sorted(plan.required, key=lambda c: positions[c])
    labels = plan.schema.labels
    chains = [(labels[c], labels[p], c, p) for c, p in plan.chains]
    row_no = first_row - 1
    for fields in rows:
        if not fields or (len(fields) == 1 and fields[0] == ""):
            continue  # blank line: pyarrow skips it, so it is not a data row
        row_no += 1
        if len(fields) != len(header):
            col = header[len(fields)] if len(fields) < len(header) else "(extra field)"
            return row_no, col, f"row has {len(fields)} fields but the header has {len(header)}"
        values: dict[str, float] = {}
        for name in ordered:
            problem, v = _check_cell(plan.kind(name), fields[positions[name]])
            if problem is not None:
                return row_no, name, problem
            values[name] = v
            for child, parent, ci, pi in chains:
                both = name in (child, parent) and child in values and parent in values
                if both and values[child] > values[parent]:
                    return row_no, child, _chain_message(plan.schema, ci, pi)
    return None


# --------------------------------------------------------------------------------------------
# CSV


def _read_header(path: Path) -> tuple[list[str], int]:
    with open(path, "rb") as f:
        line = f.readline()
    if not line.strip():
        raise DataValidationError(path, "empty file: expected a header line with column names")
    header = next(csv.reader([line.decode("utf-8-sig").rstrip("\r\n")]))
    return [h.strip() for h in header], len(line)


def _count_data_lines(path: Path, start: int) -> int:
    """Upper bound of data rows (newline count), so arrays are allocated once at full size."""
    n = 0
    last = b"\n"
    buf = bytearray(16 << 20)
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += buf.count(b"\n", 0, k)
            last = bytes(buf[k - 1 : k])
    return n + (0 if last == b"\n" else 1)


def _check_columns(path: Path, plan: _Plan, available: Sequence[str]) -> dict[str, int]:
    positions: dict[str, int] = {}
    for i, name in enumerate(available):
        positions.setdefault(name, i)
    missing = [c for c in plan.required if c not in positions]
    if missing:
        more = (
            f" (and {len(missing) - 1} more: {', '.join(missing[1:6])}...)"
            if len(missing) > 1
            else ""
        )
        raise DataValidationError(
            path,
            f"missing required column{more}; schema '{plan.schema.name}' needs "
            f"{len(plan.required)} feature/label columns",
            column=missing[0],
        )
    return positions


def _columns_from_table(table: pa.Table | pa.RecordBatch, names: Sequence[str]) -> dict:
    out: dict[str, np.ndarray] = {}
    for name in names:
        col = table.column(name)
        out[name] = (
            col.to_numpy()
            if isinstance(col, pa.ChunkedArray)
            else col.to_numpy(zero_copy_only=False)
        )
    return out


def iter_line_chunks(f: BinaryIO, chunk_bytes: int) -> Iterator[memoryview]:
    """Line-aligned slices of a binary stream, about ``chunk_bytes`` each (a line longer than
    that makes its chunk longer). Shared with the raw AliExpress preparer."""
    carry = b""
    while True:
        data = f.read(chunk_bytes)
        if not data:
            if carry:
                yield memoryview(carry)
            return
        if carry:
            data = carry + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # one line longer than a chunk: keep reading
            carry = data
            continue
        carry = data[cut:]
        yield memoryview(data)[:cut]


def _iter_chunks(path: Path, start: int, chunk_bytes: int) -> Iterator[memoryview]:
    with open(path, "rb") as f:
        f.seek(start)
        yield from iter_line_chunks(f, chunk_bytes)


def _load_csv(path: Path, plan: _Plan, chunk_bytes: int) -> ScenarioData:
    header, header_len = _read_header(path)
    positions = _check_columns(path, plan, header)
    sink = _Sink(plan, _count_data_lines(path, header_len), path, positions)
    read_opts = pacsv.ReadOptions(
        column_names=header, use_threads=True, block_size=max(1 << 19, chunk_bytes // 4)
    )
    convert_opts = pacsv.ConvertOptions(
        column_types=plan.csv_types(),
        include_columns=list(plan.required),
        null_values=list(NULL_TOKENS),
        strings_can_be_null=False,
        quoted_strings_can_be_null=True,
    )

    def parse(chunk: memoryview) -> tuple[pa.Table | None, Exception | None]:
        try:
            reader = pa.BufferReader(pa.py_buffer(chunk))
            return pacsv.read_csv(
                reader, read_options=read_opts, convert_options=convert_opts
            ), None
        except pa.ArrowException as exc:  # located exactly by the diagnostic pass
            return None, exc

    def consume(chunk: memoryview, future: Future) -> None:
        table, exc = future.result()
        if table is None:
            text = chunk.tobytes().decode("utf-8", errors="replace")
            rows = csv.reader(text.splitlines())
            found = _diagnose_rows(rows, header, plan, positions, sink.n + 1)
            if found is not None:
                row, col, problem = found
                raise DataValidationError(path, problem, row=row, column=col) from exc
            raise DataValidationError(
                path, f"cannot parse the rows after data row {sink.n}: {exc}"
            ) from exc
        for batch in table.to_batches():  # record batches are small: cache-friendly checks
            sink.add(_columns_from_table(batch, plan.required), batch.num_rows)

    # Parse the next chunk (pyarrow, GIL released) while numpy converts the current one.
    pending: deque[tuple[memoryview, Future]] = deque()
    with ThreadPoolExecutor(max_workers=1) as pool:
        for chunk in _iter_chunks(path, header_len, chunk_bytes):
            pending.append((chunk, pool.submit(parse, chunk)))
            if len(pending) > _PIPELINE_DEPTH:
                consume(*pending.popleft())
        while pending:
            consume(*pending.popleft())
    pa.default_memory_pool().release_unused()
    return sink.result()


# --------------------------------------------------------------------------------------------
# Parquet


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


# --------------------------------------------------------------------------------------------
# Public API


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


def _scenario_files(data_dir: Path) -> dict[str, Path]:
    files = {}
    for split in ("train", "test"):
        found = find_split_file(data_dir, split)
        if found is None:
            raise FileNotFoundError(
                f"the spec's scenarios come from a column: no {split}.csv or {split}.parquet "
                f"in {data_dir}"
            )
        files[split] = found
    return files


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
    files = {}
    for split in ("train", "test"):
        found = find_split_file(scenario_dir, split)
        if found is None:
            raise FileNotFoundError(
                f"scenario '{scenario}': no {split}.csv or {split}.parquet in {scenario_dir}"
            )
        files[split] = found
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
