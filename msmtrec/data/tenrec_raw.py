"""Build processed scenario files from the raw Tenrec files (Yuan et al., NeurIPS 2022).

The raw release has one CSV per platform and content type. The video files (``QK-video.csv``,
``QB-video.csv``) have the header ``user_id,item_id,click,follow,like,share,video_category,
watching_times,gender,age``; each becomes one scenario (named after the file) of the built-in
``tenrec`` spec: features ``user_id``, ``item_id``, ``video_category``, ``gender``, ``age``,
tasks ``click`` and ``like`` (Tenrec's own multi-task benchmark), ``like`` chained on
``click``. The article files are used when their header holds every column the spec needs
(``category_first`` stands in for ``video_category``); a file that does not is skipped with a
message naming what it lacks.

Why it is built this way:

* The files are GBs, so they are streamed: line-aligned byte chunks (the loader's
  ``iter_line_chunks``) parsed by pyarrow, checked with numpy, appended to Parquet writers.
  Memory is one chunk, whatever the file's size. ``--max-rows`` stops early.
* Ids are written raw (non-negative integers). The spec's hashed tables map them into their
  buckets at load time with ``msmtrec.data.hashing`` — the function the gateway uses, so a
  request's ``user_id`` lands in the row training used. Small categoricals (category, gender,
  age) beyond the spec's vocabulary go to the out-of-vocabulary row at load time (counted
  here). ``watching_times`` is dropped: it is only non-zero after a click (a label leak).
* The train/test split is deterministic and needs no second pass: row ``r`` of a file goes to
  test when ``hash_ids(r + seed·2^40) mod 10^6 < test_fraction·10^6`` (``msmtrec.data.hashing``).
  Both outputs keep the file's row order (the loader's validation slice is the tail of
  train, as for AliExpress); ``row_id`` keeps each row's 0-based data row in the raw file.
* ``like`` without ``click`` contradicts the chain (P(like) = P(click) · P(like | click)):
  such labels are set to 0 and counted in the summary, never silently.
* Bad input (a missing column, a non-integer id, a label outside {0, 1}) raises
  ``DataValidationError`` naming the raw file, the 1-based data row and the column; outputs
  are written to temporary files and renamed at the end, so nothing is half-written.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msmtrec.data.aliexpress_raw import _open_raw
from msmtrec.data.hashing import hash_ids
from msmtrec.data.loader import (
    NULL_TOKENS,
    DataValidationError,
    _check_columns,
    _diagnose_rows,
    _Plan,
    _value_problem,
    iter_line_chunks,
)
from msmtrec.data.schema import FeatureSchema
from msmtrec.data.spec_file import load_spec

__all__ = [
    "DEFAULT_TEST_FRACTION",
    "RAW_FILES",
    "find_tenrec_files",
    "prepare_tenrec",
    "prepare_tenrec_files",
    "split_is_test",
]

RAW_FILES: tuple[str, ...] = ("QK-video", "QB-video", "QK-article", "QB-article")
ALIASES: dict[str, tuple[str, ...]] = {"video_category": ("video_category", "category_first")}
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_CHUNK_BYTES = 8 << 20
_SPLIT_BUCKETS = 1_000_000
_ROW_GROUP = 65_536


def split_is_test(rows: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """Deterministic per-row split: True for the rows (0-based data rows of a file) in test."""
    keyed = rows.astype(np.int64) + (np.int64(seed & 0xFFFFF) << np.int64(40))
    return hash_ids(keyed, _SPLIT_BUCKETS) < round(test_fraction * _SPLIT_BUCKETS)


def _raw_schema(spec: FeatureSchema) -> FeatureSchema:
    """The columns a raw file must hold, as a schema the loader's checks understand: the
    spec's categoricals (raw ids, no vocabulary) and labels, without a chain (raw like may
    exceed click; it is clipped and counted instead)."""
    return FeatureSchema(
        categorical=spec.categorical,
        vocab_sizes=(1,) * spec.num_categorical,
        numerical=spec.numerical,
        labels=spec.labels,
        tasks=tuple(f"raw_{t}" for t in spec.tasks),
        id_column="row_id",
        name=f"{spec.name} raw file",
    )


def _resolve_columns(header: list[str], spec: FeatureSchema) -> tuple[dict[str, str], list[str]]:
    """{spec column: raw column} and the spec columns the header cannot provide."""
    mapping, missing = {}, []
    for name in (*spec.categorical, *spec.numerical, *spec.labels):
        found = next((a for a in ALIASES.get(name, (name,)) if a in header), None)
        if found is None:
            missing.append(name)
        else:
            mapping[name] = found
    return mapping, missing


def _read_header(path: Path) -> list[str]:
    with _open_raw(path) as f:
        line = f.readline()
    if not line.strip():
        raise DataValidationError(path, "empty file: expected a header line with column names")
    return [h.strip() for h in next(csv.reader([line.decode("utf-8-sig").rstrip("\r\n")]))]


class _Writer:
    """A Parquet file written under a temporary name and renamed on :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.positives: np.ndarray | None = None

    def write(self, table: pa.Table, labels: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(str(self.tmp), table.schema, compression="zstd")
        self.writer.write_table(table, row_group_size=_ROW_GROUP)
        self.rows += table.num_rows
        pos = labels.sum(axis=0, dtype=np.int64)
        self.positives = pos if self.positives is None else self.positives + pos

    def commit(self, empty: pa.Schema) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.tmp), empty, compression="zstd")
            self.writer.write_table(empty.empty_table())
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _output_schema(spec: FeatureSchema) -> pa.Schema:
    fields = [pa.field("row_id", pa.int64())]
    fields += [pa.field(c, pa.int64()) for c in spec.categorical]
    fields += [pa.field(c, pa.float32()) for c in spec.numerical]
    fields += [pa.field(c, pa.uint8()) for c in spec.labels]
    return pa.schema(fields)


def _prepare_file(
    path: Path,
    out_dir: Path,
    spec: FeatureSchema,
    mapping: dict[str, str],
    header: list[str],
    *,
    max_rows: int | None,
    seed: int,
    test_fraction: float,
    chunk_bytes: int,
) -> dict[str, Any]:
    raw = _raw_schema(spec)
    plan = _Plan(raw)
    # the loader's checks see spec column names; a raw alias is renamed in the header copy
    renamed = [next((k for k, v in mapping.items() if v == h), h) for h in header]
    positions = _check_columns(path, plan, renamed)
    types = {mapping[c]: pa.float64() for c in (*spec.categorical, *spec.labels)}
    types.update({mapping[c]: pa.float32() for c in spec.numerical})
    read_opts = pacsv.ReadOptions(column_names=header, use_threads=True, block_size=1 << 20)
    convert_opts = pacsv.ConvertOptions(
        column_types=types,
        include_columns=list(types),
        null_values=list(NULL_TOKENS),
        strings_can_be_null=False,
        quoted_strings_can_be_null=True,
    )
    writers = {split: _Writer(out_dir / f"{split}.parquet") for split in ("train", "test")}
    vocab = np.asarray(spec.vocab_sizes, dtype=np.int64)
    hashed = np.array([spec.tables[t].hashed for t in spec.feature_tables], dtype=bool)
    oov = np.zeros(spec.num_categorical, dtype=np.int64)
    rows = clipped = 0
    chain = [(j, spec.tasks.index(p)) for j, p in enumerate(spec.task_parents) if p is not None]
    try:
        with _open_raw(path) as f:
            f.readline()  # the header
            for chunk in iter_line_chunks(f, chunk_bytes):
                try:
                    table = pacsv.read_csv(
                        pa.BufferReader(pa.py_buffer(chunk)),
                        read_options=read_opts,
                        convert_options=convert_opts,
                    )
                except pa.ArrowException as exc:
                    text = chunk.tobytes().decode("utf-8", errors="replace")
                    found = _diagnose_rows(
                        csv.reader(text.splitlines()), renamed, plan, positions, rows + 1
                    )
                    if found is None:
                        raise DataValidationError(
                            path, f"cannot parse the rows after data row {rows}: {exc}"
                        ) from exc
                    row, col, problem = found
                    raise DataValidationError(path, problem, row=row, column=col) from exc
                if max_rows is not None and rows + table.num_rows > max_rows:
                    table = table.slice(0, max_rows - rows)
                n = table.num_rows
                cols = {c: table.column(mapping[c]).to_numpy() for c in mapping}
                _check_chunk(path, spec, cols, rows)
                labels = np.stack([cols[c] for c in spec.labels], 1).astype(np.uint8)
                for child, parent in chain:
                    bad = labels[:, child] > labels[:, parent]
                    clipped += int(bad.sum())
                    labels[bad, child] = 0
                row_id = np.arange(rows, rows + n, dtype=np.int64)
                out: dict[str, np.ndarray] = {"row_id": row_id}
                for c in spec.categorical:
                    out[c] = cols[c].astype(np.int64)
                for c in spec.numerical:
                    out[c] = cols[c].astype(np.float32)
                for j, c in enumerate(spec.labels):
                    out[c] = labels[:, j]
                cat = np.stack([out[c] for c in spec.categorical], 1)
                oov += ((cat >= vocab) & ~hashed).sum(axis=0)
                test = split_is_test(row_id, seed, test_fraction)
                whole = pa.table({k: pa.array(v) for k, v in out.items()})
                for split, mask in (("train", ~test), ("test", test)):
                    writers[split].write(whole.filter(pa.array(mask)), labels[mask])
                rows += n
                if max_rows is not None and rows >= max_rows:
                    break
        if rows == 0:
            raise DataValidationError(path, "no data rows")
        for w in writers.values():
            w.commit(_output_schema(spec))
    finally:
        for w in writers.values():
            w.abort()
    return {
        "rows": rows,
        **{
            split: {
                "rows": w.rows,
                **{
                    f"{label}_rate": (float(w.positives[j]) / w.rows if w.rows else None)
                    for j, label in enumerate(spec.labels)
                    if w.positives is not None
                },
            }
            for split, w in writers.items()
        },
        "labels_clipped_to_parent": clipped,
        "ids_beyond_vocab": dict(zip(spec.categorical, oov.tolist(), strict=True)),
        "columns": {k: v for k, v in mapping.items() if k != v},
    }


def _check_chunk(path: Path, spec: FeatureSchema, cols: dict[str, np.ndarray], first: int) -> None:
    """First bad cell of a parsed chunk (smallest row, then spec column order) as an error."""
    problems: list[tuple[int, int, str, str]] = []
    order = (*spec.categorical, *spec.numerical, *spec.labels)
    for k, c in enumerate(order):
        v = cols[c]
        if c in spec.labels:
            bad, kind = (v != 0) & (v != 1), "label"
        elif c in spec.categorical:
            bad, kind = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0), "categorical"
        else:
            bad, kind = ~np.isfinite(v), "numerical"
        if bad.any():
            i = int(np.argmax(bad))
            problems.append((i, k, c, _value_problem(kind, float(v[i])) or "invalid value"))
    if problems:
        i, _, c, problem = min(problems)
        raise DataValidationError(path, problem, row=first + i + 1, column=c)


def find_tenrec_files(raw_dir: Path) -> dict[str, Path]:
    """{scenario: raw file} of the Tenrec files present (``.csv``, ``.csv.gz`` or ``.zip``)."""
    found = {}
    for stem in RAW_FILES:
        # the official release spells one file "QB-artilce.csv"
        stems = (stem, "QB-artilce") if stem == "QB-article" else (stem,)
        hits = [raw_dir / f"{s}{e}" for s in stems for e in (".csv", ".csv.gz", ".zip")]
        hit = next((p for p in hits if p.is_file()), None)
        if hit is not None:
            found[stem] = hit
    return found


def prepare_tenrec(
    raw_dir: Path | str,
    out_dir: Path | str,
    *,
    scenarios: tuple[str, ...] | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    spec: FeatureSchema | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Write ``<out_dir>/<scenario>/{train,test}.parquet`` for each raw Tenrec file.

    ``scenarios``: only these files (by name, e.g. ``QK-video``); default every file present.
    Returns a summary: per scenario rows, label rates, clipped chained labels, ids beyond
    the vocabulary, distinct user/item ids; ``skipped`` {file: reason} for files whose
    columns do not fit the spec.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw Tenrec directory not found: {raw_dir}")
    files = find_tenrec_files(raw_dir)
    if scenarios:
        unknown = [s for s in scenarios if s not in files]
        if unknown:
            raise FileNotFoundError(
                f"no raw file for scenario(s) {unknown} under {raw_dir} "
                f"(found: {', '.join(files) or 'none'}; expected e.g. QK-video.csv)"
            )
        files = {s: files[s] for s in scenarios}
    if not files:
        raise FileNotFoundError(
            f"no raw Tenrec file under {raw_dir} (expected {', '.join(RAW_FILES)} .csv)"
        )
    return prepare_tenrec_files(
        files, out_dir, max_rows=max_rows, seed=seed, test_fraction=test_fraction, spec=spec,
        chunk_bytes=chunk_bytes,
    )  # fmt: skip


def prepare_tenrec_files(
    files: dict[str, Path],
    out_dir: Path | str,
    *,
    max_rows: int | None = None,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    spec: FeatureSchema | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """:func:`prepare_tenrec` on explicit ``{scenario: raw file}`` (any scenario names)."""
    out_dir = Path(out_dir)
    spec = spec or load_spec("tenrec")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    summary: dict[str, Any] = {"scenarios": {}, "skipped": {}, "seed": seed,
                               "test_fraction": test_fraction}  # fmt: skip
    for name, path in files.items():
        header = _read_header(path)
        mapping, missing = _resolve_columns(header, spec)
        if missing:
            summary["skipped"][name] = f"{path.name} has no column for {', '.join(missing)}"
            continue
        summary["scenarios"][name] = _prepare_file(
            path, out_dir / name, spec, mapping, header, max_rows=max_rows, seed=seed,
            test_fraction=test_fraction, chunk_bytes=chunk_bytes,
        )  # fmt: skip
    if not summary["scenarios"]:
        reasons = "; ".join(summary["skipped"].values())
        raise DataValidationError(out_dir, f"no raw file fits the spec: {reasons}")
    return summary
