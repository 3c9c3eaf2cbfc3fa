"""Out-of-core training data: a Parquet split read as a stream of row groups, shuffled
through a bounded buffer, so memory does not grow with the number of rows.

Why it is built this way:

* Per-scenario logs can be larger than one machine's memory, while SGD only needs *a*
  random order, not a uniform permutation of every row. Each epoch visits the file's row
  groups in a random order; their rows go through a buffer of at most ``buffer_rows`` rows.
  When the buffer is full it is permuted and (about) half of it is emitted as batches, the
  rest stays and mixes with the next groups. Every row is emitted exactly once per epoch,
  and the order is a function of ``(seed, epoch)`` only.
* Memory is the buffer twice (the permuted copy) plus one row group (65,536 rows in files
  written by this project): ~2 × ``buffer_rows`` × row bytes + one group, whatever the file's
  length. The figures are in ``benchmarks/results/performance.md`` (``data_loading.py``).
* Rows are validated, hashed and normalized by the loader's own per-row-group reader
  (:func:`msmtrec.data.loader.read_row_group`): a stream yields exactly the arrays
  :func:`~msmtrec.data.loader.load_split` would, errors name the file, row and column, and
  batches are :class:`~msmtrec.data.dataset.ScenarioData` in the in-memory dtypes, so the
  trainer turns them into the same tensors (``Trainer.fit`` accepts a stream).
* A row range (``start``/``stop``) restricts the stream, e.g. to the head of a train file
  whose newest tail is the validation slice (:func:`load_rows` reads such a tail in memory).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from msmtrec.data.dataset import ScenarioData, ScenarioSplits
from msmtrec.data.loader import (
    DataValidationError,
    categorical_dtype,
    open_parquet,
    read_row_group,
)
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema

__all__ = ["DEFAULT_BUFFER_ROWS", "ParquetStream", "load_rows", "stream_scenario"]

DEFAULT_BUFFER_ROWS = 262_144  # ~75 MB of AliExpress rows (286 bytes each)
_STREAM_KEY = zlib.crc32(b"msmtrec.data.stream")


class ParquetStream:
    """Rows ``[start, stop)`` of one Parquet split, streamed in shuffled batches.

    ``len(stream)`` is its number of rows (from the file's metadata, nothing is read).
    ``max_buffered_rows`` records the most rows the shuffle buffer ever held (≤
    ``buffer_rows``), so the bound can be checked.
    """

    def __init__(
        self,
        path: Path | str,
        schema: FeatureSchema = ALIEXPRESS,
        *,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".parquet", ".pq"):
            raise DataValidationError(
                self.path, "streaming needs a Parquet file (convert CSV once, e.g. with a preparer)"
            )
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        if buffer_rows < 1:
            raise ValueError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.schema = schema
        self.buffer_rows = buffer_rows
        self._pf, self._positions = open_parquet(self.path, schema)
        meta = self._pf.metadata
        sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self._offsets[-1])
        stop = total if stop is None else stop
        if not 0 <= start <= stop <= total:
            raise ValueError(f"row range [{start}, {stop}) is not within the file's {total} rows")
        self.start, self.stop = start, stop
        self.max_buffered_rows = 0

    def __len__(self) -> int:
        return self.stop - self.start

    def _groups(self) -> list[tuple[int, int, int]]:
        """(group, lo, hi) of every row group overlapping the range, ``[lo, hi)`` within it."""
        out = []
        for g in range(len(self._offsets) - 1):
            a, b = int(self._offsets[g]), int(self._offsets[g + 1])
            lo, hi = max(a, self.start), min(b, self.stop)
            if lo < hi:
                out.append((g, lo - a, hi - a))
        return out

    def _read(self, group: int, lo: int, hi: int) -> ScenarioData:
        first = int(self._offsets[group])
        return read_row_group(
            self._pf, self.path, self.schema, self._positions, group, first, (lo, hi)
        )

    def groups_in_order(self) -> Iterator[ScenarioData]:
        """Every row of the range in file order, one row group at a time (no shuffling)."""
        for g, lo, hi in self._groups():
            yield self._read(g, lo, hi)

    def batches(self, batch_size: int, *, seed: int, epoch: int = 0) -> Iterator[ScenarioData]:
        """One epoch in shuffled batches of ``batch_size`` rows (the last one may be smaller).
        The order depends on ``(seed, epoch)`` only. A yielded batch stays valid after the
        next one is produced (batches are never overwritten)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cap = max(self.buffer_rows, batch_size)
        rng = np.random.default_rng(
            np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, _STREAM_KEY])
        )
        s = self.schema
        cat = np.empty((cap, s.num_categorical), dtype=categorical_dtype(s))
        num = np.empty((cap, s.num_numerical), dtype=np.float32)
        lab = np.empty((cap, s.num_tasks), dtype=np.uint8)
        n = 0
        # emit about half a full buffer at a time, in whole batches (at least one)
        emit = max(batch_size, (cap // 2) // batch_size * batch_size)
        groups = self._groups()
        for k in rng.permutation(len(groups)):
            part = self._read(*groups[k])
            pos = 0
            while pos < len(part):
                take = min(cap - n, len(part) - pos)
                cat[n : n + take] = part.categorical[pos : pos + take]
                num[n : n + take] = part.numerical[pos : pos + take]
                lab[n : n + take] = part.labels[pos : pos + take]
                n += take
                pos += take
                self.max_buffered_rows = max(self.max_buffered_rows, n)
                if n == cap:
                    yield from self._drain(cat, num, lab, n, emit, batch_size, rng)
                    n -= emit
            del part
        yield from self._drain(cat, num, lab, n, n, batch_size, rng)

    @staticmethod
    def _drain(
        cat: np.ndarray,
        num: np.ndarray,
        lab: np.ndarray,
        n: int,
        emit: int,
        batch_size: int,
        rng: np.random.Generator,
    ) -> Iterator[ScenarioData]:
        """Permute the ``n`` buffered rows, yield the first ``emit`` of them as batches and
        move the others to the front of the buffer."""
        if n == 0:
            return
        perm = rng.permutation(n)
        out = ScenarioData(cat[perm], num[perm], lab[perm])  # fresh arrays: batches stay valid
        kept = n - emit
        if kept:
            cat[:kept], num[:kept], lab[:kept] = (
                out.categorical[emit:], out.numerical[emit:], out.labels[emit:],
            )  # fmt: skip
        for a in range(0, emit, batch_size):
            yield out.slice(a, min(emit, a + batch_size))


def load_rows(
    path: Path | str, schema: FeatureSchema = ALIEXPRESS, *, start: int = 0, stop: int | None = None
) -> ScenarioData:
    """Rows ``[start, stop)`` of a Parquet split in memory (e.g. the validation tail of a
    streamed train file), read one row group at a time."""
    stream = ParquetStream(path, schema, start=start, stop=stop)
    parts = list(stream.groups_in_order())
    if not parts:
        return ScenarioData(
            np.empty((0, schema.num_categorical), categorical_dtype(schema)),
            np.empty((0, schema.num_numerical), np.float32),
            np.empty((0, schema.num_tasks), np.uint8),
        )
    return parts[0] if len(parts) == 1 else ScenarioData.concat(parts)


def stream_scenario(
    data_dir: Path | str,
    scenario: str,
    schema: FeatureSchema = ALIEXPRESS,
    valid_fraction: float = 0.1,
    *,
    buffer_rows: int = DEFAULT_BUFFER_ROWS,
) -> tuple[ParquetStream, ScenarioData, ScenarioData]:
    """(train stream, valid, test) of one scenario, split as :func:`load_scenario` splits it:
    valid is the newest ``valid_fraction`` of ``train.parquet`` (held in memory, like test);
    the stream covers the rows before it. Memory: valid + test + the stream's buffer."""
    from msmtrec.data.loader import find_split_file, load_split

    scenario_dir = Path(data_dir) / scenario
    train_file, test_file = (find_split_file(scenario_dir, s) for s in ("train", "test"))
    if train_file is None or test_file is None:
        raise FileNotFoundError(
            f"scenario '{scenario}': streaming needs train.parquet and test.parquet in "
            f"{scenario_dir}"
        )
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {valid_fraction}")
    n = len(ParquetStream(train_file, schema))
    if n < 2:
        raise DataValidationError(train_file, "needs at least 2 rows to hold out validation")
    cut = n - max(1, round(n * valid_fraction))  # the rule of ScenarioData.split_tail
    train = ParquetStream(train_file, schema, buffer_rows=buffer_rows, stop=cut)
    return train, load_rows(train_file, schema, start=cut), load_split(test_file, schema)


def stream_splits(
    data_dir: Path | str,
    scenario: str,
    schema: FeatureSchema = ALIEXPRESS,
    valid_fraction: float = 0.1,
    buffer_rows: int = DEFAULT_BUFFER_ROWS,
) -> ScenarioSplits:
    """:func:`stream_scenario` as the :class:`ScenarioSplits` a client runtime trains on: the
    train split a bounded-memory stream, valid and test in memory. What ``simulate
    --stream-buffer-rows`` and ``msmtrec client --stream-buffer-rows`` load."""
    if buffer_rows < 1:
        raise ValueError(f"stream buffer rows must be >= 1, got {buffer_rows}")
    train, valid, test = stream_scenario(
        data_dir, scenario, schema, valid_fraction, buffer_rows=buffer_rows
    )
    return ScenarioSplits(scenario, train, valid, test, schema)  # type: ignore[arg-type]
