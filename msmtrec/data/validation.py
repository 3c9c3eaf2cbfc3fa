"""What a processed split must hold, and where it breaks: ``DataValidationError`` (file,
row, column), the per-schema column plan, cell checks and the slow diagnostic pass."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from msmtrec.data.schema import FeatureSchema

# Cell texts read as "missing". The same list drives pyarrow and the diagnostic pass, so both
# agree on what an empty/NaN cell is.
NULL_TOKENS: tuple[str, ...] = (
    "", "NA", "N/A", "n/a", "NaN", "nan", "-nan", "-NaN", "NULL", "null", "None", "#N/A",
)  # fmt: skip
_NULL_SET = frozenset(NULL_TOKENS)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
