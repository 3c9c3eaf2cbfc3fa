"""Tenrec preparer on tiny raw files written here (columns, split, chained labels, OOV,
skipped article files, located errors, nothing half-written) and the Tenrec-layout
generator (deterministic, power-law ids, like ⊂ click, learnable by the loader's spec)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msmtrec.data.cli import register
from msmtrec.data.hashing import hash_ids
from msmtrec.data.loader import DataValidationError, load_scenario
from msmtrec.data.spec_file import load_spec
from msmtrec.data.synth_tenrec import RAW_HEADER, TenrecSynthConfig, synthesize_tenrec
from msmtrec.data.tenrec_raw import prepare_tenrec, split_is_test

TENREC = load_spec("tenrec")
N = 200


def video_rows(n: int = N, offset: int = 0) -> list[list[str]]:
    rows = []
    for r in range(n):
        click = int(r % 3 == 0)
        like = click * int(r % 2 == 0)
        rows.append(
            [str(10**9 + r % 17 + offset), str(r % 11), str(click), "0", str(like), "0",
             str(r % 70), str(click * 3), str(r % 3), str(r % 8)]
        )  # fmt: skip
    return rows


def write(path: Path, header: list[str] | tuple[str, ...], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(r) for r in [list(header), *rows]) + "\n")
    return path


def test_video_files_become_scenarios(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    qk = video_rows()
    qk[5][2], qk[5][4] = "0", "1"  # like without click: clipped and counted
    write(raw / "QK-video.csv", RAW_HEADER, qk)
    write(raw / "QB-video.csv", RAW_HEADER, video_rows(50, offset=5))
    summary = prepare_tenrec(raw, tmp_path / "out", seed=3)
    assert set(summary["scenarios"]) == {"QK-video", "QB-video"} and not summary["skipped"]
    s = summary["scenarios"]["QK-video"]
    assert s["rows"] == N and s["train"]["rows"] + s["test"]["rows"] == N
    assert s["labels_clipped_to_parent"] == 1
    assert s["ids_beyond_vocab"]["video_category"] == sum(r % 70 >= 64 for r in range(N))
    train = pd.read_parquet(tmp_path / "out" / "QK-video" / "train.parquet")
    test = pd.read_parquet(tmp_path / "out" / "QK-video" / "test.parquet")
    assert list(train.columns) == ["row_id", *TENREC.categorical, "click", "like"]
    in_test = split_is_test(np.arange(N), 3, 0.2)
    assert test["row_id"].tolist() == np.flatnonzero(in_test).tolist()
    assert train["row_id"].tolist() == np.flatnonzero(~in_test).tolist()
    assert 0.1 < in_test.mean() < 0.3
    both = pd.concat([train, test]).set_index("row_id").sort_index()
    assert both["user_id"].tolist() == [10**9 + r % 17 for r in range(N)]  # raw ids kept
    assert both.loc[5, "like"] == 0 and (both["like"] <= both["click"]).all()
    # the prepared files load with the tenrec spec: ids hashed, categories to OOV
    splits = load_scenario(tmp_path / "out", "QK-video", TENREC)
    users = splits.test.categorical[:, 0]
    np.testing.assert_array_equal(users, hash_ids(test["user_id"].to_numpy(), 2_000_000))
    assert splits.test.categorical[:, 2].max() <= 64


def test_split_depends_on_the_seed_only(tmp_path: Path) -> None:
    a = split_is_test(np.arange(1000), 0, 0.2)
    assert np.array_equal(a, split_is_test(np.arange(1000), 0, 0.2))
    assert not np.array_equal(a, split_is_test(np.arange(1000), 1, 0.2))


def test_max_rows_scenarios_and_articles(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(raw / "QK-video.csv", RAW_HEADER, video_rows())
    # an article file without any category column (spelled as upstream): skipped, with why
    write(raw / "QB-artilce.csv", ["user_id", "item_id", "click", "like", "gender", "age"],
          [["1", "2", "1", "0", "1", "3"]])  # fmt: skip
    # one with category_first: used in place of video_category
    header = ["user_id", "item_id", "click", "read", "like", "category_first", "gender", "age"]
    write(raw / "QK-article.csv", header, [["1", "2", "1", "1", "1", "7", "0", "2"]] * 5)
    summary = prepare_tenrec(raw, tmp_path / "out", max_rows=30)
    assert summary["scenarios"]["QK-video"]["rows"] == 30
    assert "video_category" in summary["skipped"]["QB-article"]
    assert summary["scenarios"]["QK-article"]["columns"] == {"video_category": "category_first"}
    art = pd.read_parquet(tmp_path / "out" / "QK-article" / "train.parquet")
    assert set(art["video_category"]) <= {7}
    only = prepare_tenrec(raw, tmp_path / "only", scenarios=("QK-video",))
    assert (
        list(only["scenarios"]) == ["QK-video"] and not (tmp_path / "only" / "QK-article").exists()
    )
    with pytest.raises(FileNotFoundError, match=r"no raw file for scenario\(s\) \['QB-video'\]"):
        prepare_tenrec(raw, tmp_path / "x", scenarios=("QB-video",))
    with pytest.raises(DataValidationError, match="no raw file fits the spec"):
        prepare_tenrec(raw, tmp_path / "x", scenarios=("QB-article",))


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (3, "user_id", "1.5", "non-integer value"),
        (7, "item_id", "abc", "non-numeric value 'abc'"),  # unparseable: diagnostic pass
        (150, "click", "2", "label must be 0 or 1, got 2"),  # a later chunk
        (120, "age", "", "missing value"),
        (9, "gender", "-1", "negative categorical id"),
    ],
)
def test_errors_are_located_and_nothing_is_half_written(
    tmp_path: Path, row: int, column: str, value: str, message: str
) -> None:
    rows = video_rows()
    rows[row - 1][RAW_HEADER.index(column)] = value
    write(tmp_path / "raw" / "QK-video.csv", RAW_HEADER, rows)
    out = tmp_path / "out"
    with pytest.raises(
        DataValidationError, match=rf"QK-video\.csv, row {row}, column '{column}': {message}"
    ):
        prepare_tenrec(tmp_path / "raw", out, chunk_bytes=1024)  # several chunks
    assert not any(p.is_file() for p in out.rglob("*"))  # no output, no temporary file


def test_missing_label_column_skips_and_refuses(tmp_path: Path) -> None:
    header = [c for c in RAW_HEADER if c != "like"]
    rows = [[c for h, c in zip(RAW_HEADER, r, strict=True) if h != "like"] for r in video_rows()]
    write(tmp_path / "raw" / "QK-video.csv", header, rows)
    with pytest.raises(DataValidationError, match=r"QK-video\.csv has no column for like"):
        prepare_tenrec(tmp_path / "raw", tmp_path / "out")


def test_generator_is_deterministic_power_law_and_chained(tmp_path: Path) -> None:
    cfg = TenrecSynthConfig(rows=20_000, users=1_000_000, items=200_000, seed=4)
    a = synthesize_tenrec(tmp_path / "a", cfg)
    synthesize_tenrec(tmp_path / "b", cfg)
    for name in cfg.scenarios:
        for rel in (f"raw/{name}.csv", f"{name}/train.parquet", f"{name}/test.parquet"):
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    df = pd.read_csv(tmp_path / "a" / "raw" / "QK-video.csv")
    assert list(df.columns) == list(RAW_HEADER)
    assert (df["like"] <= df["click"]).all() and df["like"].sum() > 0
    counts = df["user_id"].value_counts()
    assert counts.iloc[0] > 50 * counts.median()  # a few ids are very popular (power law)
    s = a["scenarios"]["QK-video"]
    assert 2_000 < s["distinct_user_ids"] < 20_000 and df["user_id"].max() > 100_000
    assert s["oracle_test_auc"]["click"] > 0.7  # the signal is there to be learned
    splits = load_scenario(tmp_path / "a", "QK-video", TENREC)
    assert len(splits.train) + len(splits.valid) == s["train"]["rows"]


def test_cli_refuses_flags_of_the_other_generator(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["data", "synth", "--spec", "tenrec", "--out", str(tmp_path),
                              "--train-rows", "5"])  # fmt: skip
    assert args.func(args) == 1
    assert "--train-rows does not apply to --spec tenrec" in capsys.readouterr().err
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path), "--users", "5"])
    assert args.func(args) == 1
    args = parser.parse_args(["data", "synth", "--spec", "tenrec", "--out", str(tmp_path / "t"),
                              "--rows", "500", "--users", "100"])  # fmt: skip
    assert args.func(args) == 0
    raw = str(tmp_path / "t" / "raw")
    args = parser.parse_args(["data", "prepare-tenrec", "--raw", raw, "--out",
                              str(tmp_path / "p"), "--max-rows", "100"])  # fmt: skip
    assert args.func(args) == 0
    args = parser.parse_args(["data", "validate", str(tmp_path / "p"), "--spec", "tenrec"])
    assert args.func(args) == 0
    assert "like rate" in capsys.readouterr().out
