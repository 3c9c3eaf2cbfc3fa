"""Processed CSV splits: line-aligned chunks parsed by pyarrow, pipelined with conversion."""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.sink import _Sink
from msmtrec.data.validation import (
    NULL_TOKENS,
    DataValidationError,
    _check_columns,
    _diagnose_rows,
    _Plan,
)

DEFAULT_CHUNK_BYTES = 4 << 20  # CSV text per pyarrow call: bounds the parser's memory
_PIPELINE_DEPTH = 1  # chunks parsed ahead of the one being converted


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
