"""Loader: real AliExpress rows, corrupted copies with exact error locations, CSV == Parquet,
OOV mapping, multi-chunk reads, scenario directories and write/read round trips."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msmtrec.data import (
    ALIEXPRESS,
    DataValidationError,
    ScenarioData,
    list_scenarios,
    load_scenario,
    load_split,
    write_split,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "aliexpress_sample"
TRAIN = FIXTURES / "train.csv"
TEST = FIXTURES / "test.csv"


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def corrupt(tmp_path: Path, name: str, row: int, column: str, value: str) -> Path:
    """Copy of the train fixture with one cell (1-based data row) replaced."""
    header, rows = read_rows(TRAIN)
    rows[row - 1][header.index(column)] = value
    return write_rows(tmp_path / name, header, rows)


def test_reads_real_fixture_rows() -> None:
    ref = pd.read_csv(TRAIN)
    data = load_split(TRAIN)
    assert data.categorical.shape == (100, 16) and data.categorical.dtype == np.int16
    assert data.numerical.shape == (100, 63) and data.numerical.dtype == np.float32
    assert data.labels.shape == (100, 2) and data.labels.dtype == np.uint8
    np.testing.assert_array_equal(data.categorical, ref[list(ALIEXPRESS.categorical)].to_numpy())
    np.testing.assert_array_equal(
        data.numerical, ref[list(ALIEXPRESS.numerical)].to_numpy().astype(np.float32)
    )
    np.testing.assert_array_equal(data.labels, ref[["click", "conversion"]].to_numpy())
    assert data.labels.sum(axis=0).tolist() == [60, 2]
    assert data.oov_counts is not None and data.oov_counts.tolist() == [0] * 16
    assert data.categorical[0, :7].tolist() == [9, 0, 0, 0, 9, 4, 25]
    assert data.numerical[0, 23] == np.float32(0.116248)

    test = load_split(TEST)
    assert len(test) == 20 and test.labels.sum(axis=0).tolist() == [10, 2]
    # The fixture writes some numerical columns as ints ("0"); they still load as float32.
    assert (ref.dtypes[list(ALIEXPRESS.numerical)] == np.int64).any()


@pytest.mark.parametrize(
    ("row", "column", "value", "expected"),
    [
        (7, "numerical_12", "abc", "non-numeric value 'abc'"),
        (10, "click", "2", "label must be 0 or 1, got 2"),
        (4, "numerical_30", "", "missing value"),
        (5, "categorical_3", "2.5", "non-integer value 2.5"),
        (9, "categorical_5", "-1", "negative categorical id -1"),
        (12, "numerical_1", "NaN", "missing value"),
        (13, "categorical_2", "", "missing value"),
        (14, "conversion", "x", "non-numeric value 'x'"),
        (99, "numerical_63", "inf", "non-finite"),
    ],
)
def test_corrupted_cell_is_located(
    tmp_path: Path, row: int, column: str, value: str, expected: str
) -> None:
    path = corrupt(tmp_path, "bad_train.csv", row, column, value)
    with pytest.raises(DataValidationError) as info:
        load_split(path)
    err = info.value
    msg = str(err)
    assert "bad_train.csv" in msg and f"row {row}," in msg and f"'{column}'" in msg, msg
    assert expected in msg
    assert (err.row, err.column, err.path.name) == (row, column, "bad_train.csv")


def test_conversion_without_click(tmp_path: Path) -> None:
    header, rows = read_rows(TRAIN)
    r = next(i for i, row in enumerate(rows) if row[header.index("click")] == "0")
    rows[r][header.index("conversion")] = "1"
    path = write_rows(tmp_path / "conv.csv", header, rows)
    with pytest.raises(DataValidationError, match=rf"conv\.csv, row {r + 1}, column 'conversion'"):
        load_split(path)


def test_missing_column_and_ragged_row(tmp_path: Path) -> None:
    header, rows = read_rows(TRAIN)
    j = header.index("numerical_5")
    dropped = write_rows(
        tmp_path / "dropped.csv",
        header[:j] + header[j + 1 :],
        [r[:j] + r[j + 1 :] for r in rows],
    )
    with pytest.raises(DataValidationError, match=r"dropped\.csv, column 'numerical_5': missing"):
        load_split(dropped)

    rows[20] = rows[20][:-1]  # one cell short: the row, and the column it lacks, are named
    ragged = write_rows(tmp_path / "ragged.csv", header, rows)
    with pytest.raises(DataValidationError, match=r"ragged\.csv, row 21, column 'conversion'"):
        load_split(ragged)


def test_first_problem_wins_and_late_chunks_keep_row_numbers(tmp_path: Path) -> None:
    header, rows = read_rows(TRAIN)
    rows[4][header.index("numerical_40")] = "oops"
    rows[2][header.index("categorical_2")] = "1.5"
    path = write_rows(tmp_path / "two.csv", header, rows)
    with pytest.raises(DataValidationError, match=r"row 3, column 'categorical_2'"):
        load_split(path)
    # Same column, two kinds of problem: the earlier row wins, whatever its kind.
    header, rows = read_rows(TRAIN)
    rows[49][header.index("categorical_6")] = ""
    rows[10][header.index("categorical_6")] = "3.5"
    path = write_rows(tmp_path / "same_col.csv", header, rows)
    with pytest.raises(DataValidationError, match=r"row 11, column 'categorical_6': non-integer"):
        load_split(path)
    # Tiny chunks: the problem sits in a late chunk and both the vectorized check and the
    # parse-failure diagnosis must still count rows from the top of the file.
    late = corrupt(tmp_path, "late.csv", 95, "click", "3")
    with pytest.raises(DataValidationError, match=r"row 95, column 'click'"):
        load_split(late, chunk_bytes=2048)
    late2 = corrupt(tmp_path, "late2.csv", 96, "numerical_2", "zz")
    with pytest.raises(DataValidationError, match=r"row 96, column 'numerical_2'"):
        load_split(late2, chunk_bytes=2048)


def test_small_chunks_give_identical_arrays() -> None:
    whole = load_split(TRAIN)
    chunked = load_split(TRAIN, chunk_bytes=1000)  # smaller than one line: buffers grow
    for a, b in zip(
        (whole.categorical, whole.numerical, whole.labels),
        (chunked.categorical, chunked.numerical, chunked.labels),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_columns_by_name_extra_and_missing_id(tmp_path: Path) -> None:
    ref = pd.read_csv(TRAIN)
    shuffled = ref.drop(columns=["search_id"])
    shuffled["extra_text"] = "hello"
    cols = list(shuffled.columns)
    cols = cols[::-1]
    shuffled[cols].to_csv(tmp_path / "shuffled.csv", index=False)
    a, b = load_split(TRAIN), load_split(tmp_path / "shuffled.csv")
    np.testing.assert_array_equal(a.numerical, b.numerical)
    np.testing.assert_array_equal(a.categorical, b.categorical)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_integer_valued_floats_and_blank_lines(tmp_path: Path) -> None:
    header, rows = read_rows(TRAIN)
    rows[0][header.index("categorical_1")] = "9.0"
    rows[0][header.index("click")] = "1.0"
    path = write_rows(tmp_path / "floats.csv", header, rows)
    path.write_text(path.read_text() + "\n\n")
    data = load_split(path)
    assert len(data) == 100 and data.categorical[0, 0] == 9 and data.labels[0, 0] == 1


def test_oov_ids_map_to_the_extra_slot(tmp_path: Path) -> None:
    header, rows = read_rows(TRAIN)
    c7 = header.index("categorical_7")  # vocab 50
    rows[0][c7], rows[1][c7], rows[2][c7] = "50", "9999", "49"
    rows[3][header.index("categorical_4")] = "2"  # vocab 2
    path = write_rows(tmp_path / "oov.csv", header, rows)
    data = load_split(path)
    assert data.categorical[:3, 6].tolist() == [50, 50, 49]
    assert data.categorical[3, 3] == 2
    expected = [0] * 16
    expected[6], expected[3] = 2, 1
    assert data.oov_counts.tolist() == expected
    assert (data.categorical <= np.asarray(ALIEXPRESS.vocab_sizes)).all()


def test_csv_and_parquet_identical(tmp_path: Path) -> None:
    from_csv = load_split(TRAIN)
    # Parquet as other tools write it: pandas dtypes (int64 / float64), extra id column.
    pd.read_csv(TRAIN).to_parquet(tmp_path / "pandas.parquet", index=False)
    write_split(from_csv, tmp_path / "ours.parquet")
    for name in ("pandas.parquet", "ours.parquet"):
        other = load_split(tmp_path / name)
        np.testing.assert_array_equal(from_csv.categorical, other.categorical)
        np.testing.assert_array_equal(from_csv.numerical, other.numerical)
        np.testing.assert_array_equal(from_csv.labels, other.labels)
        assert other.categorical.dtype == np.int16 and other.numerical.dtype == np.float32


def test_parquet_errors_are_located(tmp_path: Path) -> None:
    df = pd.read_csv(TRAIN)
    df.loc[41, "click"] = 2
    df.to_parquet(tmp_path / "bad.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"bad\.parquet, row 42, column 'click'"):
        load_split(tmp_path / "bad.parquet")
    df = pd.read_csv(TRAIN)
    df = df.astype({"numerical_3": "object"})
    df.loc[6, "numerical_3"] = "abc"
    df["numerical_3"] = df["numerical_3"].astype(str)
    df.to_parquet(tmp_path / "text.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"text\.parquet, row 7, column 'numerical_3'"):
        load_split(tmp_path / "text.parquet")
    df = pd.read_csv(TRAIN)
    df.loc[17, "numerical_8"] = np.nan
    df.loc[30, "categorical_1"] = -3
    df.to_parquet(tmp_path / "nan.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"nan\.parquet, row 18, column 'numerical_8'"):
        load_split(tmp_path / "nan.parquet")
    df = pd.read_csv(TRAIN).drop(columns=["categorical_9"])
    df.to_parquet(tmp_path / "nocol.parquet", index=False)
    with pytest.raises(DataValidationError, match=r"nocol\.parquet, column 'categorical_9'"):
        load_split(tmp_path / "nocol.parquet")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_split_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(3)
    n = 70_000  # more than one write batch
    cat = np.stack([rng.integers(0, v + 1, n) for v in ALIEXPRESS.vocab_sizes], 1).astype(np.int16)
    num = rng.random((n, 63), dtype=np.float32)
    num[rng.random((n, 63)) < 0.3] = 0.0
    click = rng.random(n) < 0.1
    labels = np.stack([click, click & (rng.random(n) < 0.3)], 1).astype(np.uint8)
    data = ScenarioData(cat, num, labels)
    path = tmp_path / f"split{suffix}"
    write_split(data, path, search_ids=np.arange(n) + 1000)
    back = load_split(path)
    np.testing.assert_array_equal(back.categorical, cat)
    np.testing.assert_array_equal(back.numerical, num)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.oov_counts.tolist() == (cat == np.asarray(ALIEXPRESS.vocab_sizes)).sum(0).tolist()
    if suffix == ".csv":
        with open(path) as f:
            assert f.readline().rstrip("\n").split(",") == list(ALIEXPRESS.columns)
            assert f.readline().startswith("1000,")
    assert not list(tmp_path.glob("*.tmp"))


def test_scenario_directory(tmp_path: Path) -> None:
    for name in ("NL", "ES"):
        (tmp_path / name).mkdir()
        shutil.copy(TRAIN, tmp_path / name / "train.csv")
        shutil.copy(TEST, tmp_path / name / "test.csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a scenario")
    pd.read_csv(TRAIN).to_parquet(tmp_path / "ES" / "train.parquet")
    (tmp_path / "ES" / "train.csv").unlink()
    assert list_scenarios(tmp_path) == ["ES", "NL"]

    splits = load_scenario(tmp_path, "NL")
    full = load_split(TRAIN)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (90, 10, 20)
    np.testing.assert_array_equal(splits.valid.numerical, full.numerical[90:])
    np.testing.assert_array_equal(splits.train.labels, full.labels[:90])
    assert splits.name == "NL" and splits.schema == ALIEXPRESS
    assert splits.train.oov_counts.tolist() == [0] * 16
    es = load_scenario(tmp_path, "ES", valid_fraction=0.2)
    assert (len(es.train), len(es.valid)) == (80, 20)

    (tmp_path / "NL" / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no test\.csv or test\.parquet"):
        load_scenario(tmp_path, "NL")
    with pytest.raises(FileNotFoundError, match="scenario directory not found"):
        load_scenario(tmp_path, "FR")
    shutil.copy(TRAIN, tmp_path / "ES" / "train.csv")
    with pytest.raises(DataValidationError, match="keep exactly one"):
        load_scenario(tmp_path, "ES")


def test_split_tail_of_loaded_data() -> None:
    data = load_split(TRAIN)
    head, tail = data.split_tail(0.25)
    assert (len(head), len(tail)) == (75, 25)
    np.testing.assert_array_equal(tail.categorical, data.categorical[75:])


def test_header_only_and_unknown_suffix(tmp_path: Path) -> None:
    header, _ = read_rows(TRAIN)
    empty = write_rows(tmp_path / "empty.csv", header, [])
    data = load_split(empty)
    assert len(data) == 0 and data.numerical.shape == (0, 63)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataValidationError, match="unknown file type"):
        load_split(tmp_path / "x.txt")
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataValidationError, match="empty file"):
        load_split(tmp_path / "blank.csv")


def test_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    text = TRAIN.read_text()
    path = tmp_path / "windows.csv"
    path.write_bytes(("\ufeff" + text.rstrip("\n").replace("\n", "\r\n")).encode())
    a, b = load_split(TRAIN), load_split(path)
    np.testing.assert_array_equal(a.numerical, b.numerical)
    np.testing.assert_array_equal(a.labels, b.labels)
