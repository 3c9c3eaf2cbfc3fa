"""Build processed scenario files from the raw AliExpress search dataset (Tianchi 74690).

The raw dataset ships, per country, four header-less CSV files (each also as a ``.zip``):
``<cc>_user_{train,test}.csv`` (one row per search page: 33 columns of user/query features)
and ``<cc>_item_{train,test}.csv`` (one row per shown item: 49 columns, column 1 the search
id, column 49 the feedback 0 impression / 1 click / 2 purchase). This is the MTReclib
preprocessing (``data/preprocess.py``), streamed: the user file (small, one row per page) is
held in memory as sorted arrays and the item file (GBs) is read in line-aligned chunks, joined
on the search id with ``searchsorted`` and appended to the output, so memory stays bounded.

Column mapping (1-based raw column numbers):

* categorical_1..7 = user 2..8, categorical_8..9 = user 32, 33,
  categorical_10..16 = item 19, 34, 35, 36, 40, 41, 42
* numerical_1..23 = user 9..31, numerical_24..63 = item 2..48 without the categorical ones
* click = feedback >= 1, conversion = feedback == 2

Output rows follow the item file's order (MTReclib's ``pd.merge`` follows the user file's
order; the two agree when, as in the real files, items are grouped by page in page order).
Items whose search id has no user row are dropped (an inner join) and counted.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msmtrec.data.loader import DataValidationError, iter_line_chunks
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema

__all__ = [
    "FEEDBACK_COLUMN",
    "ITEM_CATEGORICAL",
    "ITEM_COLUMNS",
    "ITEM_NUMERICAL",
    "USER_CATEGORICAL",
    "USER_COLUMNS",
    "USER_NUMERICAL",
    "RawFiles",
    "find_raw_files",
    "prepare_aliexpress",
]

USER_COLUMNS = 33
ITEM_COLUMNS = 49
USER_CATEGORICAL: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 32, 33)
ITEM_CATEGORICAL: tuple[int, ...] = (19, 34, 35, 36, 40, 41, 42)
USER_NUMERICAL: tuple[int, ...] = tuple(range(9, 32))
ITEM_NUMERICAL: tuple[int, ...] = tuple(c for c in range(2, 49) if c not in ITEM_CATEGORICAL)
FEEDBACK_COLUMN = 49
SEARCH_ID_COLUMN = 1

DEFAULT_CHUNK_BYTES = 8 << 20
_NULLS = frozenset(("", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"))


def _col(c: int) -> str:
    return f"c{c}"


# --------------------------------------------------------------------------------------------
# Locating the four raw files


@dataclass(frozen=True)
class RawFiles:
    user_train: Path
    item_train: Path
    user_test: Path
    item_test: Path

    def as_dict(self) -> dict[str, str]:
        return {
            k: str(getattr(self, k)) for k in ("user_train", "item_train", "user_test", "item_test")
        }


def _candidates(raw_dir: Path, country: str, kind: str, split: str) -> list[Path]:
    cc, up = country.lower(), country.upper()
    dirs = [
        raw_dir,
        raw_dir / f"AliExpress_{up}",
        raw_dir / f"aliexpress_{up}_datasets",
        raw_dir / up,
        raw_dir / cc,
    ]
    stems = [
        f"{cc}_{kind}_{split}",  # the Tianchi release: nl_user_train.csv (.zip)
        f"{up}_{kind}_{split}",
        f"{kind}_feature_{split}",
        f"{cc}_{kind}_feature_{split}",
        f"{kind}_{split}",
    ]
    return [
        d / f"{stem}{ext}" for d in dirs for stem in stems for ext in (".csv", ".csv.gz", ".zip")
    ]


def find_raw_files(
    raw_dir: Path | str,
    country: str,
    *,
    user_train: Path | str | None = None,
    item_train: Path | str | None = None,
    user_test: Path | str | None = None,
    item_test: Path | str | None = None,
) -> RawFiles:
    """The four raw files of one country. Explicit paths win; otherwise the common layouts
    (Tianchi zip contents, MTReclib's ``AliExpress_XX`` folder, ``user_feature_train.csv``)
    are searched under ``raw_dir``."""
    raw_dir = Path(raw_dir)
    explicit = {
        "user_train": user_train,
        "item_train": item_train,
        "user_test": user_test,
        "item_test": item_test,
    }
    found: dict[str, Path] = {}
    for key, given in explicit.items():
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise FileNotFoundError(f"{key} file not found: {path}")
            found[key] = path
            continue
        kind, split = key.split("_")
        tried = _candidates(raw_dir, country, kind, split)
        hit = next((p for p in tried if p.is_file()), None)
        if hit is None:
            raise FileNotFoundError(
                f"no raw {kind} {split} file for country {country.upper()} under {raw_dir} "
                f"(looked for e.g. {tried[0].name}, {tried[2].name}, {tried[3].name} in "
                f"{raw_dir} and AliExpress_{country.upper()}/); pass its path explicitly "
                f"(--{kind}-{split})"
            )
        found[key] = hit
    return RawFiles(**found)


@contextmanager
def _open_raw(path: Path) -> Iterator[BinaryIO]:
    """A binary stream of the CSV text, whether plain, gzip or a one-member zip."""
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/")]
            csvs = [m for m in members if m.lower().endswith(".csv")] or members
            if len(csvs) != 1:
                raise DataValidationError(path, f"expected one CSV inside the zip, found {csvs}")
            with zf.open(csvs[0]) as f:
                yield f
    elif name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


# --------------------------------------------------------------------------------------------
# Reading and validating raw chunks


@dataclass(frozen=True)
class _Layout:
    """What each raw column of one file must hold."""

    n_columns: int
    kinds: dict[int, str]  # column -> id | categorical | numerical | feedback
    meaning: dict[int, str]

    def name(self, c: int) -> str:
        return f"{c} ({self.meaning[c]})" if c in self.meaning else str(c)

    def arrow_types(self) -> dict[str, pa.DataType]:
        by_kind = {"id": pa.int64(), "categorical": pa.float64(), "numerical": pa.float32()}
        by_kind["feedback"] = pa.float64()
        return {_col(c): by_kind[k] for c, k in self.kinds.items()}


def _user_layout() -> _Layout:
    kinds = {SEARCH_ID_COLUMN: "id"}
    meaning = {SEARCH_ID_COLUMN: "search id"}
    for i, c in enumerate(USER_CATEGORICAL, start=1):
        kinds[c], meaning[c] = "categorical", f"categorical_{i}"
    for i, c in enumerate(USER_NUMERICAL, start=1):
        kinds[c], meaning[c] = "numerical", f"numerical_{i}"
    return _Layout(USER_COLUMNS, kinds, meaning)


def _item_layout() -> _Layout:
    kinds = {SEARCH_ID_COLUMN: "id", FEEDBACK_COLUMN: "feedback"}
    meaning = {SEARCH_ID_COLUMN: "search id", FEEDBACK_COLUMN: "feedback"}
    for i, c in enumerate(ITEM_CATEGORICAL, start=len(USER_CATEGORICAL) + 1):
        kinds[c], meaning[c] = "categorical", f"categorical_{i}"
    for i, c in enumerate(ITEM_NUMERICAL, start=len(USER_NUMERICAL) + 1):
        kinds[c], meaning[c] = "numerical", f"numerical_{i}"
    return _Layout(ITEM_COLUMNS, kinds, meaning)


def _cell_problem(kind: str, text: str) -> str | None:
    if text.strip() in _NULLS:
        return "missing value"
    if kind == "id":
        try:
            int(text)
        except ValueError:
            return f"search id must be an integer, got {text!r}"
        return None
    try:
        v = float(text)
    except ValueError:
        return f"non-numeric value {text!r}"
    if not math.isfinite(v):
        return f"non-finite value {text}"
    if kind == "categorical" and (not v.is_integer() or v < 0):
        return f"categorical id must be a non-negative integer, got {text}"
    if kind == "feedback" and v not in (0.0, 1.0, 2.0):
        return f"feedback must be 0 (impression), 1 (click) or 2 (purchase), got {text}"
    return None


def _diagnose(chunk: memoryview, layout: _Layout, first_row: int) -> tuple[int, int, str] | None:
    """Slow exact scan of a chunk pyarrow refused: first (row, column, problem)."""
    text = chunk.tobytes().decode("utf-8", errors="replace")
    row = first_row - 1
    for fields in csv.reader(io.StringIO(text)):
        if not fields or fields == [""]:
            continue
        row += 1
        if len(fields) != layout.n_columns:
            col = min(len(fields) + 1, layout.n_columns)
            return row, col, f"row has {len(fields)} fields, expected {layout.n_columns}"
        for c in sorted(layout.kinds):
            problem = _cell_problem(layout.kinds[c], fields[c - 1])
            if problem is not None:
                return row, c, problem
    return None


def _is_header(first_line: bytes) -> bool:
    field = first_line.split(b",", 1)[0].strip().strip(b'"')
    try:
        float(field)
    except ValueError:
        return True
    return False


class _RawReader:
    """Validated numpy columns of a raw file, chunk by chunk, with exact error locations."""

    def __init__(self, path: Path, layout: _Layout, chunk_bytes: int) -> None:
        self.path, self.layout, self.chunk_bytes = path, layout, chunk_bytes
        self.rows = 0
        self.read_opts = pacsv.ReadOptions(
            column_names=[_col(c) for c in range(1, layout.n_columns + 1)],
            use_threads=True,
            block_size=max(1 << 19, chunk_bytes // 4),
        )
        self.convert_opts = pacsv.ConvertOptions(
            column_types=layout.arrow_types(),
            include_columns=[_col(c) for c in sorted(layout.kinds)],
            null_values=sorted(_NULLS),
            strings_can_be_null=False,
        )

    def _fail(self, row: int, column: int, problem: str) -> DataValidationError:
        return DataValidationError(
            self.path, problem, row=row, column=f"column {self.layout.name(column)}"
        )

    def chunks(self) -> Iterator[dict[int, np.ndarray]]:
        with _open_raw(self.path) as f:
            first = True
            for chunk in iter_line_chunks(f, self.chunk_bytes):
                if first:
                    first = False
                    end = chunk.obj.find(b"\n", 0, len(chunk))  # chunks start at 0 of .obj
                    line = bytes(chunk[: end if end >= 0 else len(chunk)])
                    if _is_header(line):
                        chunk = chunk[end + 1 :] if end >= 0 else chunk[:0]
                if len(chunk) == 0:
                    continue
                yield self._convert(chunk)

    def _convert(self, chunk: memoryview) -> dict[int, np.ndarray]:
        try:
            table = pacsv.read_csv(
                pa.BufferReader(pa.py_buffer(chunk)),
                read_options=self.read_opts,
                convert_options=self.convert_opts,
            )
        except pa.ArrowException as exc:
            found = _diagnose(chunk, self.layout, self.rows + 1)
            if found is not None:
                raise self._fail(*found) from exc
            raise DataValidationError(
                self.path, f"cannot parse the rows after data row {self.rows}: {exc}"
            ) from exc
        n = table.num_rows
        cols: dict[int, np.ndarray] = {}
        problems: list[tuple[int, int, str]] = []
        for c in sorted(self.layout.kinds):
            kind = self.layout.kinds[c]
            arr = table.column(_col(c))
            if arr.null_count:
                mask = arr.is_null().to_numpy(zero_copy_only=False)
                problems.append((int(np.argmax(mask)), c, "missing value"))
                continue
            v = arr.to_numpy()
            if kind == "numerical":
                bad = ~np.isfinite(v)
                if bad.any():
                    i = int(np.argmax(bad))
                    problems.append((i, c, f"non-finite value {v[i]}"))
                    continue
            elif kind == "categorical":
                bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0)
                if bad.any():
                    i = int(np.argmax(bad))
                    problems.append(
                        (i, c, f"categorical id must be a non-negative integer, got {v[i]}")
                    )
                    continue
                v = v.astype(np.int64)
            elif kind == "feedback":
                bad = (v != 0) & (v != 1) & (v != 2)
                if bad.any():
                    i = int(np.argmax(bad))
                    problems.append(
                        (i, c, f"feedback must be 0 (impression), 1 (click) or 2 (purchase), "
                         f"got {v[i]}")
                    )  # fmt: skip
                    continue
                v = v.astype(np.int8)
            cols[c] = v
        if problems:
            i, c, problem = min(problems)
            raise self._fail(self.rows + i + 1, c, problem)
        self.rows += n
        return cols


# --------------------------------------------------------------------------------------------
# The join


@dataclass
class _Users:
    """The user file as arrays sorted by search id, for a vectorized join."""

    sorted_ids: np.ndarray
    order: np.ndarray  # row of the user arrays for each sorted id
    categorical: np.ndarray  # (n, 9) int64
    numerical: np.ndarray  # (n, 23) float32
    duplicates: int

    @classmethod
    def read(cls, path: Path, chunk_bytes: int) -> _Users:
        reader = _RawReader(path, _user_layout(), chunk_bytes)
        ids, cats, nums = [], [], []
        for cols in reader.chunks():
            ids.append(cols[SEARCH_ID_COLUMN])
            cats.append(np.stack([cols[c] for c in USER_CATEGORICAL], axis=1))
            nums.append(np.stack([cols[c] for c in USER_NUMERICAL], axis=1))
        if not ids:
            raise DataValidationError(path, "user file has no rows")
        uid = np.concatenate(ids)
        order = np.argsort(uid, kind="stable")  # the first of equal ids keeps its place
        sorted_ids = uid[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1
        keep = np.ones(len(uid), dtype=bool)
        keep[dup] = False  # later duplicates are ignored: one page, one user row
        return cls(
            sorted_ids=sorted_ids[keep],
            order=order[keep],
            categorical=np.concatenate(cats),
            numerical=np.concatenate(nums),
            duplicates=len(dup),
        )

    def lookup(self, search_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of item rows with a user row, user row index of each matched item)."""
        pos = np.searchsorted(self.sorted_ids, search_ids)
        pos = np.minimum(pos, len(self.sorted_ids) - 1)
        matched = self.sorted_ids[pos] == search_ids
        return matched, self.order[pos[matched]]


def _output_table(
    schema: FeatureSchema, users: _Users, cols: dict[int, np.ndarray]
) -> tuple[pa.Table, int, np.ndarray]:
    matched, urow = users.lookup(cols[SEARCH_ID_COLUMN])
    out: dict[str, Any] = {schema.id_column: cols[SEARCH_ID_COLUMN][matched]}
    ucat, unum = users.categorical[urow], users.numerical[urow]
    cat_names, num_names = schema.categorical, schema.numerical
    for j in range(len(USER_CATEGORICAL)):
        out[cat_names[j]] = ucat[:, j]
    for j, c in enumerate(ITEM_CATEGORICAL, start=len(USER_CATEGORICAL)):
        out[cat_names[j]] = cols[c][matched]
    for j in range(len(USER_NUMERICAL)):
        out[num_names[j]] = unum[:, j]
    for j, c in enumerate(ITEM_NUMERICAL, start=len(USER_NUMERICAL)):
        out[num_names[j]] = cols[c][matched]
    fb = cols[FEEDBACK_COLUMN][matched]
    out[schema.labels[0]] = (fb >= 1).astype(np.uint8)
    out[schema.labels[1]] = (fb == 2).astype(np.uint8)
    table = pa.table({k: pa.array(np.ascontiguousarray(v)) for k, v in out.items()})
    cat_block = np.concatenate([ucat, np.stack([cols[c][matched] for c in ITEM_CATEGORICAL], 1)], 1)
    oov = (cat_block >= np.asarray(schema.vocab_sizes)).sum(axis=0)
    return table, int((~matched).sum()), oov


def _check_schema(schema: FeatureSchema) -> None:
    n_cat = len(USER_CATEGORICAL) + len(ITEM_CATEGORICAL)
    n_num = len(USER_NUMERICAL) + len(ITEM_NUMERICAL)
    if schema.num_categorical != n_cat or schema.num_numerical != n_num or len(schema.labels) != 2:
        raise ValueError(
            f"the raw AliExpress mapping yields {n_cat} categorical, {n_num} numerical and 2 "
            f"label columns; schema '{schema.name}' does not match"
        )


def _prepare_split(
    user_path: Path,
    item_path: Path,
    out_path: Path,
    schema: FeatureSchema,
    chunk_bytes: int,
) -> dict[str, Any]:
    users = _Users.read(user_path, chunk_bytes)
    reader = _RawReader(item_path, _item_layout(), chunk_bytes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    rows = clicks = conversions = unmatched = 0
    oov = np.zeros(schema.num_categorical, dtype=np.int64)
    writer: Any = None
    try:
        for cols in reader.chunks():
            table, missed, chunk_oov = _output_table(schema, users, cols)
            if writer is None:
                writer = _open_writer(tmp, table.schema)
            writer.write_table(table)
            rows += table.num_rows
            clicks += int(np.asarray(table.column(schema.labels[0])).sum())
            conversions += int(np.asarray(table.column(schema.labels[1])).sum())
            unmatched += missed
            oov += chunk_oov
        if writer is None:
            raise DataValidationError(item_path, "item file has no rows")
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return {
        "rows": rows,
        "ctr": clicks / rows if rows else None,
        "ctcvr": conversions / rows if rows else None,
        "clicks": clicks,
        "conversions": conversions,
        "search_pages": len(users.sorted_ids),
        "unmatched_items": unmatched,
        "duplicate_search_ids": users.duplicates,
        "ids_beyond_vocab": oov.tolist(),
        "output": str(out_path),
    }


def _open_writer(path: Path, schema: pa.Schema) -> Any:
    if path.name.endswith(".csv.tmp"):
        options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
        return pacsv.CSVWriter(str(path), schema, write_options=options)
    return pq.ParquetWriter(str(path), schema, compression="zstd")


def prepare_aliexpress(
    raw_dir: Path | str,
    country: str,
    out_dir: Path | str,
    fmt: str = "csv",
    *,
    user_train: Path | str | None = None,
    item_train: Path | str | None = None,
    user_test: Path | str | None = None,
    item_test: Path | str | None = None,
    schema: FeatureSchema = ALIEXPRESS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Write ``<out_dir>/<COUNTRY>/train.<fmt>`` and ``test.<fmt>`` in the processed schema.

    Raises ``DataValidationError`` naming the raw file, the 1-based data row and the raw
    column (with its meaning) of the first bad cell. Returns a summary per split: rows,
    click/conversion rates, unmatched items, duplicate search ids and, per categorical field,
    how many ids the schema's vocabulary will map to its OOV slot.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    _check_schema(schema)
    files = find_raw_files(
        raw_dir,
        country,
        user_train=user_train,
        item_train=item_train,
        user_test=user_test,
        item_test=item_test,
    )
    target = Path(out_dir) / country.upper()
    summary: dict[str, Any] = {"country": country.upper(), "format": fmt, "inputs": files.as_dict()}
    for split in ("train", "test"):
        summary[split] = _prepare_split(
            getattr(files, f"user_{split}"),
            getattr(files, f"item_{split}"),
            target / f"{split}.{fmt}",
            schema,
            chunk_bytes,
        )
    return summary
