"""Raw AliExpress preparer on small raw files fabricated here: the exact column mapping,
labels, join, file layouts (plain, zip, explicit paths) and located errors."""

from __future__ import annotations

import argparse
import csv
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msmtrec.data import ALIEXPRESS, DataValidationError, load_split
from msmtrec.data.aliexpress_raw import find_raw_files, prepare_aliexpress
from msmtrec.data.cli import register

# The mapping written out independently of the implementation (1-based raw columns).
CAT_SOURCES = [f"u{c}" for c in range(2, 9)] + ["u32", "u33"]
CAT_SOURCES += [f"i{c}" for c in (19, 34, 35, 36, 40, 41, 42)]
NUM_SOURCES = [f"u{c}" for c in range(9, 32)]
NUM_SOURCES += [f"i{c}" for c in [*range(2, 19), *range(20, 34), 37, 38, 39, *range(43, 49)]]
USER_CAT = {2, 3, 4, 5, 6, 7, 8, 32, 33}
ITEM_CAT = {19, 34, 35, 36, 40, 41, 42}


def user_row(sid: int, r: int) -> list[str]:
    row = [str(sid)]
    for c in range(2, 34):
        row.append(str((r * 3 + c) % 7) if c in USER_CAT else f"{(c * 1000 + r) / 1e6:.6f}")
    return row


def item_row(sid: int, r: int, feedback: int) -> list[str]:
    row = [str(sid)]
    for c in range(2, 49):
        row.append(str((r + c) % 2) if c in ITEM_CAT else f"{0.5 + (c * 1000 + r) / 1e6:.6f}")
    row.append(str(feedback))
    return row


# Three pages with items, one page without items, one orphan item (no user row).
USERS = {"train": [(101, 0), (102, 1), (103, 2), (104, 3)], "test": [(201, 0), (202, 1)]}
ITEMS = {
    "train": [
        *[(101, 0, 0), (101, 1, 1), (101, 2, 2), (102, 3, 0)],
        *[(999, 4, 1), (103, 5, 1), (103, 6, 0), (102, 7, 2)],
    ],
    "test": [(201, 0, 1), (202, 1, 0), (202, 2, 2)],
}


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def fabricate(root: Path, naming: str = "tianchi") -> Path:
    """Raw files of country NL under ``root``; returns the directory to pass as raw_dir."""
    for split in ("train", "test"):
        users = [user_row(sid, r) for sid, r in USERS[split]]
        items = [item_row(sid, r, fb) for sid, r, fb in ITEMS[split]]
        if naming == "tianchi":  # nl_user_train.csv, header-less
            write_csv(root / f"nl_user_{split}.csv", users)
            write_csv(root / f"nl_item_{split}.csv", items)
        elif naming == "feature":  # user_feature_train.csv, with a header line
            write_csv(root / f"user_feature_{split}.csv", users, [f"u{c}" for c in range(1, 34)])
            write_csv(root / f"item_feature_{split}.csv", items, [f"i{c}" for c in range(1, 50)])
        elif naming == "zip":  # MTReclib layout: AliExpress_NL/nl_user_train.zip
            d = root / "AliExpress_NL"
            d.mkdir(parents=True, exist_ok=True)
            for kind, rows in (("user", users), ("item", items)):
                text = "\n".join(",".join(r) for r in rows) + "\n"
                with zipfile.ZipFile(d / f"nl_{kind}_{split}.zip", "w") as zf:
                    zf.writestr(f"nl_{kind}_{split}.csv", text)
    return root


def expected(split: str) -> pd.DataFrame:
    users = {sid: user_row(sid, r) for sid, r in USERS[split]}
    rows = []
    for sid, r, fb in ITEMS[split]:
        if sid not in users:
            continue
        src = {f"u{c}": v for c, v in enumerate(users[sid], start=1)}
        src.update({f"i{c}": v for c, v in enumerate(item_row(sid, r, fb), start=1)})
        row = {"search_id": sid}
        row.update({f"categorical_{j}": int(src[s]) for j, s in enumerate(CAT_SOURCES, 1)})
        row.update({f"numerical_{j}": float(src[s]) for j, s in enumerate(NUM_SOURCES, 1)})
        row.update(click=int(fb >= 1), conversion=int(fb == 2))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(ALIEXPRESS.columns))


def test_mapping_lists_have_the_schema_sizes() -> None:
    assert len(CAT_SOURCES) == 16 and len(NUM_SOURCES) == 63


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 300])  # 300 bytes: every line its own chunk
def test_exact_mapping_labels_and_join(tmp_path: Path, chunk_bytes: int) -> None:
    raw = fabricate(tmp_path / "raw")
    summary = prepare_aliexpress(raw, "nl", tmp_path / "out", chunk_bytes=chunk_bytes)
    for split in ("train", "test"):
        got = pd.read_csv(tmp_path / "out" / "NL" / f"{split}.csv")
        want = expected(split)
        assert list(got.columns) == list(ALIEXPRESS.columns)
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    tr = summary["train"]
    assert (tr["rows"], tr["clicks"], tr["conversions"]) == (7, 4, 2)
    assert tr["unmatched_items"] == 1 and tr["search_pages"] == 4
    assert tr["ctr"] == pytest.approx(4 / 7)
    assert summary["test"]["rows"] == 3 and summary["country"] == "NL"
    # Spot-check a few cells by hand: row 3 of train is search 101's third item (feedback 2).
    got = pd.read_csv(tmp_path / "out" / "NL" / "train.csv")
    assert got.loc[2, "categorical_8"] == int(user_row(101, 0)[31])  # user column 32
    assert got.loc[2, "numerical_24"] == float(item_row(101, 2, 2)[1])  # item column 2
    assert got.loc[2, "numerical_63"] == float(item_row(101, 2, 2)[47])  # item column 48
    assert got.loc[2, "categorical_16"] == int(item_row(101, 2, 2)[41])  # item column 42
    assert (got.loc[2, "click"], got.loc[2, "conversion"]) == (1, 1)
    # The result is a valid processed file for the loader.
    data = load_split(tmp_path / "out" / "NL" / "train.csv")
    assert len(data) == 7 and (data.labels[:, 1] <= data.labels[:, 0]).all()


def test_zip_layout_header_naming_explicit_paths_and_parquet(tmp_path: Path) -> None:
    want = expected("train")
    fabricate(tmp_path / "z", "zip")
    prepare_aliexpress(tmp_path / "z", "NL", tmp_path / "o1", fmt="parquet")
    got = pd.read_parquet(tmp_path / "o1" / "NL" / "train.parquet")
    pd.testing.assert_frame_equal(got, want, check_dtype=False)

    fabricate(tmp_path / "f", "feature")
    prepare_aliexpress(tmp_path / "f", "NL", tmp_path / "o2")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "o2" / "NL" / "train.csv"), want, check_dtype=False
    )

    raw = fabricate(tmp_path / "t")
    elsewhere = tmp_path / "elsewhere" / "users.csv"
    elsewhere.parent.mkdir()
    (raw / "nl_user_train.csv").rename(elsewhere)
    with pytest.raises(FileNotFoundError, match="--user-train"):
        find_raw_files(raw, "NL")
    prepare_aliexpress(raw, "NL", tmp_path / "o3", user_train=elsewhere)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "o3" / "NL" / "train.csv"), want, check_dtype=False
    )


def _rewrite(path: Path, row: int, col: int, value: str | None) -> None:
    """Set raw cell (1-based data row, 1-based column); value None drops the cell."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if value is None:
        del rows[row - 1][col - 1]
    else:
        rows[row - 1][col - 1] = value
    write_csv(path, rows)


@pytest.mark.parametrize(
    ("file", "row", "col", "value", "column_text", "problem"),
    [
        ("nl_item_train.csv", 5, 49, "3", "column 49 (feedback)", "feedback must be 0"),
        ("nl_user_train.csv", 2, 12, "abc", "column 12 (numerical_4)", "non-numeric value 'abc'"),
        ("nl_item_train.csv", 6, 34, "1.5", "column 34 (categorical_11)", "non-negative integer"),
        ("nl_item_train.csv", 7, 20, "", "column 20 (numerical_41)", "missing value"),
        ("nl_user_train.csv", 3, 33, None, "column 33 (categorical_9)", "32 fields, expected 33"),
        ("nl_item_train.csv", 2, 1, "x7", "column 1 (search id)", "must be an integer"),
    ],
)
def test_errors_name_file_row_and_column(
    tmp_path: Path,
    file: str,
    row: int,
    col: int,
    value: str | None,
    column_text: str,
    problem: str,
) -> None:
    raw = fabricate(tmp_path / "raw")
    _rewrite(raw / file, row, col, value)
    for chunk_bytes in (1 << 20, 300):
        with pytest.raises(DataValidationError) as info:
            prepare_aliexpress(raw, "NL", tmp_path / "out", chunk_bytes=chunk_bytes)
        msg = str(info.value)
        assert file in msg and f"row {row}," in msg and column_text in msg, msg
        assert problem in msg, msg
    assert not list((tmp_path / "out").rglob("*.tmp")), "no half-written output"


def test_missing_country_files(tmp_path: Path) -> None:
    fabricate(tmp_path / "raw")
    with pytest.raises(FileNotFoundError, match="country ES"):
        prepare_aliexpress(tmp_path / "raw", "ES", tmp_path / "out")


def test_ids_beyond_vocab_are_reported(tmp_path: Path) -> None:
    raw = fabricate(tmp_path / "raw")
    _rewrite(raw / "nl_user_train.csv", 1, 8, "77")  # categorical_7, vocab 50
    summary = prepare_aliexpress(raw, "NL", tmp_path / "out")
    beyond = summary["train"]["ids_beyond_vocab"]
    assert beyond[6] == 3  # search 101 has three items
    data = load_split(tmp_path / "out" / "NL" / "train.csv")
    assert data.oov_counts[6] == 3
    assert np.all(data.categorical[:3, 6] == ALIEXPRESS.vocab_sizes[6])


def test_cli_prepare_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = fabricate(tmp_path / "raw")
    parser = argparse.ArgumentParser(prog="msmtrec")
    register(parser.add_subparsers())

    def run(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    argv = ["data", "prepare-aliexpress", "--raw", str(raw), "--country", "nl"]
    assert run([*argv, "--out", str(tmp_path / "out"), "--format", "parquet"]) == 0
    out = capsys.readouterr().out
    assert "NL" in out and "0.5714" in out and "1 items without a user row" in out
    assert (tmp_path / "out" / "NL" / "train.parquet").is_file()
    assert run(["data", "validate", str(tmp_path / "out")]) == 0
    assert "ok" in capsys.readouterr().out

    _rewrite(raw / "nl_item_test.csv", 2, 49, "7")
    assert run([*argv, "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err
    assert "nl_item_test.csv, row 2, column 'column 49 (feedback)'" in err
    assert run([*argv, "--out", str(tmp_path / "o"), "--user-train", str(tmp_path / "no.csv")]) == 1
    assert "user_train file not found" in capsys.readouterr().err
