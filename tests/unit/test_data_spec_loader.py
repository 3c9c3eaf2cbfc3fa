"""Loader driven by a dataset spec other than AliExpress: hashed ids, normalization, any
number of tasks, product chains, and every data error naming file, row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msmtrec.data.hashing import hash_ids
from msmtrec.data.loader import DataValidationError, label_chains, load_split
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.data.spec_file import load_spec, parse_spec

SPEC = parse_spec(
    {
        "name": "logs",
        "id_column": "row_id",
        "categorical": [
            {"name": "user_id", "hash_buckets": 1000, "policy": "private"},
            {"name": "gender", "vocab_size": 3},
        ],
        "numerical": [
            {"name": "price", "normalization": "log1p"},
            {"name": "age", "normalization": "standard", "mean": 30.0, "std": 10.0},
            {"name": "raw"},
        ],
        "tasks": [
            {"name": "click", "label": "click"},
            {"name": "buy", "label": "buy", "parent": "click"},
            {"name": "share", "label": "share"},
        ],
    }
)
HEADER = ["row_id", "user_id", "gender", "price", "age", "raw", "click", "buy", "share"]
GOOD = [
    ["0", "123456789012", "0", "0", "30", "1.5", "1", "1", "0"],
    ["1", "7", "2", "9", "40", "-2", "1", "0", "1"],
    ["2", "7", "5", "0.5", "20", "0", "0", "0", "1"],
]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    return path


def test_hashing_normalization_and_three_tasks(tmp_path: Path) -> None:
    data = load_split(write_csv(tmp_path / "ok.csv", GOOD), SPEC)
    assert data.categorical.dtype == np.int16  # 1001 rows fit int16
    expected_users = hash_ids(np.array([123456789012, 7, 7]), 1000)
    np.testing.assert_array_equal(data.categorical[:, 0], expected_users)
    assert data.categorical[:, 1].tolist() == [0, 2, 3]  # 5 >= vocab 3 -> OOV slot 3
    assert data.oov_counts.tolist() == [0, 1]  # hashed ids are never OOV
    np.testing.assert_allclose(data.numerical[:, 0], np.log1p([0, 9, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(data.numerical[:, 1], [0.0, 1.0, -1.0])
    np.testing.assert_array_equal(data.numerical[:, 2], np.float32([1.5, -2, 0]))
    assert data.labels.tolist() == [[1, 1, 0], [1, 0, 1], [0, 0, 1]]


def test_parquet_equals_csv_with_native_types(tmp_path: Path) -> None:
    cols = list(zip(*GOOD, strict=True))
    table = pa.table(
        {
            name: pa.array([float(x) for x in col])
            if name in ("price", "age", "raw")
            else pa.array([int(x) for x in col], pa.int64())
            for name, col in zip(HEADER, cols, strict=True)
        }
    )
    pq.write_table(table, tmp_path / "ok.parquet")
    a = load_split(tmp_path / "ok.parquet", SPEC)
    b = load_split(write_csv(tmp_path / "ok.csv", GOOD), SPEC)
    for x, y in ((a.categorical, b.categorical), (a.numerical, b.numerical), (a.labels, b.labels)):
        np.testing.assert_array_equal(x, y)


def test_large_hash_tables_use_int32(tmp_path: Path) -> None:
    tenrec = load_spec("tenrec")
    header = ["user_id", "item_id", "video_category", "gender", "age", "click", "like"]
    path = write_csv(tmp_path / "t.csv", [["5", "99999999", "3", "1", "2", "1", "1"]], header)
    data = load_split(path, tenrec)
    assert data.categorical.dtype == np.int32
    assert data.categorical[0, 1] == hash_ids(np.array([99999999]), 1_000_000)[0]


def bad(row: int, column: str, value: str) -> list[list[str]]:
    rows = [list(r) for r in GOOD]
    rows[row - 1][HEADER.index(column)] = value
    return rows


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (2, "user_id", "abc", "non-numeric value 'abc'"),  # wrong type: diagnostic pass
        (3, "user_id", "1.5", "non-integer value"),
        (1, "user_id", "-3", "negative categorical id"),
        (2, "gender", "", "missing value"),
        (3, "price", "-1", "log1p normalization needs values > -1"),
        (2, "age", "x", "non-numeric value 'x'"),
        (1, "share", "2", "label must be 0 or 1, got 2"),
        (3, "buy", "1", "buy=1 but click=0 .*'buy' is chained on 'click'"),
    ],
)
def test_errors_name_file_row_and_column(
    tmp_path: Path, row: int, column: str, value: str, message: str
) -> None:
    path = write_csv(tmp_path / "bad.csv", bad(row, column, value))
    with pytest.raises(DataValidationError, match=rf"bad\.csv, row {row}, column '{column}': "):
        load_split(path, SPEC)
    with pytest.raises(DataValidationError, match=message):
        load_split(path, SPEC)


def test_chain_violation_in_the_diagnostic_pass(tmp_path: Path) -> None:
    # A text cell later in the chunk sends it to the slow pass, which must still find the
    # chained label first (row 1 before row 3).
    rows = bad(1, "buy", "1")
    rows[0][HEADER.index("click")] = "0"
    rows[2][HEADER.index("raw")] = "text"
    path = write_csv(tmp_path / "diag.csv", rows)
    with pytest.raises(DataValidationError, match=r"diag\.csv, row 1, column 'buy': buy=1"):
        load_split(path, SPEC)


def test_missing_column_and_wrong_parquet_type(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "share"]
    rows = [[c for h, c in zip(HEADER, r, strict=True) if h != "share"] for r in GOOD]
    with pytest.raises(DataValidationError, match=r"m\.csv, column 'share': missing required"):
        load_split(write_csv(tmp_path / "m.csv", rows, header), SPEC)
    cols = {name: pa.array([0, 1, 0]) for name in HEADER}
    cols["gender"] = pa.array([[1], [2], [3]])  # a list column: not numeric at all
    pq.write_table(pa.table(cols), tmp_path / "w.parquet")
    with pytest.raises(DataValidationError, match=r"w\.parquet, column 'gender': .*non-numeric"):
        load_split(tmp_path / "w.parquet", SPEC)
    cols["gender"] = pa.array(["0", "1", "oops"])  # text that must parse as numbers
    pq.write_table(pa.table(cols), tmp_path / "s.parquet")
    with pytest.raises(DataValidationError, match=r"s\.parquet, row 3, column 'gender'"):
        load_split(tmp_path / "s.parquet", SPEC)


def test_parquet_chain_violation_is_located(tmp_path: Path) -> None:
    cols = {name: pa.array([0] * 4) for name in HEADER}
    cols["click"] = pa.array([1, 1, 0, 0])
    cols["buy"] = pa.array([1, 0, 0, 1])
    pq.write_table(pa.table(cols), tmp_path / "c.parquet")
    with pytest.raises(DataValidationError, match=r"c\.parquet, row 4, column 'buy'"):
        load_split(tmp_path / "c.parquet", SPEC)


def test_chains(tmp_path: Path) -> None:
    assert label_chains(SPEC) == ((1, 0),)
    assert label_chains(ALIEXPRESS) == ((1, 0),)  # implicit: conversion <= click
    assert label_chains(load_spec("tenrec")) == ((1, 0),)
    two_free = parse_spec(
        {"name": "f", "numerical": [{"name": "x"}],
         "tasks": [{"name": "click", "label": "click"}, {"name": "follow", "label": "f"}]}
    )  # fmt: skip
    assert label_chains(two_free) == ()
    path = write_csv(tmp_path / "free.csv", [["0", "0", "1"]], ["x", "click", "f"])
    assert load_split(path, two_free).labels.tolist() == [[0, 1]]  # no chain: f > click ok


COLUMN_SPEC_DICT = {
    "name": "bycol",
    "scenarios": {"source": "column", "column": "market"},
    "categorical": [{"name": "gender", "vocab_size": 3}],
    "numerical": [{"name": "raw"}],
    "tasks": [{"name": "click", "label": "click"}],
}
COLUMN_SPEC = parse_spec(COLUMN_SPEC_DICT)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_scenarios_from_a_column(tmp_path: Path, suffix: str) -> None:
    from msmtrec.data.loader import list_scenarios, load_scenario

    markets = ["NL", "ES", "NL", "NL", "ES", "NL", "ES", "NL", "NL", "ES"]
    frame = {"market": markets, "gender": list(range(3)) * 3 + [0],
             "raw": [float(i) for i in range(10)], "click": [i % 2 for i in range(10)]}  # fmt: skip
    for split in ("train", "test"):
        path = tmp_path / f"{split}{suffix}"
        if suffix == ".csv":
            rows = [[str(frame[k][i]) for k in frame] for i in range(10)]
            write_csv(path, rows, list(frame))
        else:
            pq.write_table(pa.table(frame), path)
    assert list_scenarios(tmp_path, COLUMN_SPEC) == ["ES", "NL"]
    nl = load_scenario(tmp_path, "NL", COLUMN_SPEC)
    rows_nl = [i for i, m in enumerate(markets) if m == "NL"]  # file order kept
    full = np.concatenate([nl.train.numerical, nl.valid.numerical])[:, 0]
    assert full.tolist() == [float(i) for i in rows_nl]
    assert nl.test.labels[:, 0].tolist() == [i % 2 for i in rows_nl]
    with pytest.raises(DataValidationError, match=rf"train{suffix}, column 'market': no row"):
        load_scenario(tmp_path, "FR", COLUMN_SPEC)
    other = parse_spec({**COLUMN_SPEC_DICT, "scenarios": {"source": "column", "column": "cc"}})
    with pytest.raises(DataValidationError, match=r"column 'cc': missing the scenario column"):
        list_scenarios(tmp_path, other)
    (tmp_path / f"test{suffix}").unlink()
    with pytest.raises(FileNotFoundError, match=r"no test\.csv or test\.parquet"):
        load_scenario(tmp_path, "NL", COLUMN_SPEC)
