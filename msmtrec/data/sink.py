"""Vectorized validation and conversion of parsed column chunks into preallocated arrays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from msmtrec.data.dataset import ScenarioData
from msmtrec.data.hashing import hash_ids
from msmtrec.data.validation import (
    DataValidationError,
    _chain_message,
    _first,
    _Plan,
    _value_problem,
    categorical_dtype,
)


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
