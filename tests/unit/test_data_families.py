"""Data families, the oracle side file and the held-out field-pair generator: each family's
knob does what it says, the oracle is aligned with the test rows, loaders never mistake the
side file for a split, and the CLI's --family path writes what the API writes."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logit

from msmtrec.data import (
    ALIEXPRESS,
    FAMILIES,
    FAMILY_STRENGTHS,
    FieldPairConfig,
    family_config,
    list_scenarios,
    load_oracle,
    load_scenario,
    load_split,
    synthesize_family,
)
from msmtrec.data.cli import register
from msmtrec.data.loader import find_split_file
from msmtrec.data.synth import SynthConfig, _auc, generate, synthesize
from msmtrec.data.synth_fieldpair import generate as generate_fieldpair

SMALL = {"train_rows": 3000, "test_rows": 1000}


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="msmtrec")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------------ byte identity


def test_default_knobs_write_the_version_1_bytes(tmp_path: Path) -> None:
    """Files made by the generator before task_conflict / quantity_skew / calibration and the
    oracle file existed (hashes taken from that code): the new knobs at their defaults must
    not change a byte. If this fails, the generator changed: bump GENERATOR_VERSION."""
    synthesize(tmp_path, SynthConfig(scenarios=("NL", "ES"), train_rows=300, test_rows=100, seed=4))
    got = {k: hashlib.sha256(v).hexdigest() for k, v in files_of(tmp_path).items()}
    assert got["NL/train.csv"].startswith("163953913565f7d5")
    assert got["NL/test.csv"].startswith("7b717eb10a514411")
    assert got["ES/train.csv"].startswith("0ae1b0790b48c3df")
    assert got["ES/test.csv"].startswith("e6f239cb001a71a1")
    assert got["synth.json"].startswith("e1b41d497647672a")
    assert "task_conflict" not in SynthConfig().to_dict()
    assert SynthConfig(task_conflict=0.5).to_dict()["task_conflict"] == 0.5


# ------------------------------------------------------------------------ oracle side file


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_oracle_side_file_is_aligned_with_the_test_rows(tmp_path: Path, fmt: str) -> None:
    cfg = SynthConfig(scenarios=("NL", "ES"), ctr=0.2, seed=5, fmt=fmt, **SMALL)
    summary = synthesize(tmp_path, cfg)
    mem = generate(cfg)
    for name in cfg.scenarios:
        oracle = load_oracle(tmp_path, name)
        test = load_split(tmp_path / name / f"test.{fmt}")
        assert oracle.shape == (len(test), 2) and oracle.dtype == np.float64
        np.testing.assert_array_equal(oracle, mem[name].test_oracle)
        assert ((oracle >= 0) & (oracle <= 1)).all()
        assert (oracle[:, 1] <= oracle[:, 0]).all()
        # Row order: the oracle's AUC against the file's labels is the recorded one (a
        # shuffled oracle would sit near 0.5).
        auc = _auc(oracle[:, 0], test.labels[:, 0])
        assert auc == pytest.approx(summary["scenarios"][name]["oracle_test_auc"]["ctr"], abs=1e-6)
        assert oracle[:, 0].mean() == pytest.approx(test.labels[:, 0].mean(), abs=0.03)
        # Better than a model-free lookup: the train click rate per value of the single most
        # informative categorical field.
        train = mem[name].train
        best = 0.5
        for j, v in enumerate(ALIEXPRESS.vocab_sizes):
            clicks = np.bincount(train.categorical[:, j], train.labels[:, 0], minlength=v)
            seen = np.bincount(train.categorical[:, j], minlength=v)
            rate = (clicks + 1) / (seen + 2)
            best = max(best, _auc(rate[test.categorical[:, j]], test.labels[:, 0]))
        assert auc > best + 0.05 and auc > 0.7


def test_loaders_never_take_the_oracle_file_for_a_split(tmp_path: Path) -> None:
    synthesize(tmp_path / "csv", SynthConfig(scenarios=("A",), train_rows=200, test_rows=50))
    directory = tmp_path / "csv" / "A"
    assert sorted(p.name for p in directory.iterdir()) == [
        "test.csv",
        "test.oracle.parquet",
        "train.csv",
    ]
    assert find_split_file(directory, "test") == directory / "test.csv"
    assert len(load_scenario(tmp_path / "csv", "A").test) == 50

    cfg = SynthConfig(scenarios=("A",), train_rows=200, test_rows=50, fmt="parquet")
    synthesize(tmp_path / "pq", cfg)
    directory = tmp_path / "pq" / "A"
    assert find_split_file(directory, "test") == directory / "test.parquet"
    assert len(load_scenario(tmp_path / "pq", "A").test) == 50
    assert list_scenarios(tmp_path / "pq") == ["A"]
    (directory / "test.parquet").unlink()  # only the side file is left: no test split
    assert find_split_file(directory, "test") is None
    with pytest.raises(FileNotFoundError, match=r"no test\.csv or test\.parquet"):
        load_scenario(tmp_path / "pq", "A")
    (directory / "test.oracle.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.oracle\.parquet"):
        load_oracle(tmp_path / "pq", "A")


# ------------------------------------------------------------------------ family knobs


def test_families_and_their_strengths() -> None:
    assert set(FAMILY_STRENGTHS) == set(FAMILIES)
    for family in FAMILIES:
        low, high = FAMILY_STRENGTHS[family]["low"], FAMILY_STRENGTHS[family]["high"]
        assert 0 <= low < high <= 1
    assert family_config("concept").concept_shift == 0.8
    assert family_config("concept", 0.2).covariate_shift == 0.1
    assert family_config("conflict").task_conflict == 1.0
    assert family_config("covariate").covariate_shift == 0.9
    assert family_config("quantity").quantity_skew == 15.0
    assert family_config("quantity", 0.0).quantity_skew == 1.0
    fp = family_config("fieldpair", 0.3)
    assert isinstance(fp, FieldPairConfig) and fp.concept_shift == 0.3
    # explicit overrides win over the family's setting
    assert family_config("concept", 0.8, concept_shift=0.1, seed=3).concept_shift == 0.1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: family_config("nope"), "family"),
        (lambda: family_config("concept", 1.5), "strength"),
        (lambda: family_config("concept", -0.1), "strength"),
        (lambda: family_config("fieldpair", task_conflict=0.5), "task_conflict"),
        (lambda: family_config("concept", bogus=1), "bogus"),
        (lambda: SynthConfig(task_conflict=1.5).validate(), "task_conflict"),
        (lambda: SynthConfig(quantity_skew=0.5).validate(), "quantity_skew"),
        (lambda: SynthConfig(calibration="global").validate(), "calibration"),
        (lambda: FieldPairConfig(concept_shift=2.0).validate(), "concept_shift"),
        (lambda: FieldPairConfig(test_rows=0).validate(), "test_rows"),
    ],
)
def test_bad_family_settings_name_the_field(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_conflict_flips_the_task_relation_in_every_other_scenario() -> None:
    names = ("A", "B", "C", "D")
    cfg = SynthConfig(scenarios=names, task_correlation=0.6, task_conflict=1.0, seed=2, **SMALL)
    sc = generate(cfg)
    for name, sign in zip(names, (1, -1, 1, -1), strict=True):
        assert sc[name].stats["latent_task_correlation"] == pytest.approx(sign * 0.6, abs=0.05)
        # realized in the true probabilities: click logit vs purchase-given-click logit
        o = sc[name].test_oracle
        r = np.corrcoef(logit(o[:, 0]), logit(o[:, 1] / o[:, 0]))[0, 1]
        assert sign * r > 0.4
    calm = generate(SynthConfig(scenarios=names, task_correlation=0.6, seed=2, **SMALL))
    assert calm["B"].stats["latent_task_correlation"] == pytest.approx(0.6, abs=0.05)
    # even positions are untouched by the knob
    np.testing.assert_array_equal(calm["C"].test.labels, sc["C"].test.labels)
    half = generate(dataclasses.replace(cfg, task_conflict=0.5))
    assert half["B"].stats["latent_task_correlation"] == pytest.approx(0.0, abs=0.05)


def test_quantity_skew_shrinks_only_the_last_scenarios_train_rows() -> None:
    cfg = family_config("quantity", 1.0, scenarios=("A", "B", "C"), **SMALL)
    sc = generate(cfg)
    assert [len(s.train) for s in sc.values()] == [3000, 3000, 200]
    assert [len(s.test) for s in sc.values()] == [1000, 1000, 1000]
    assert sc["C"].stats["train_rows"] == 200
    skewed = generate(SynthConfig(scenarios=("A", "B"), quantity_skew=4.0, **SMALL))
    assert [len(s.train) for s in skewed.values()] == [3000, 750]


def test_covariate_family_changes_p_x_but_not_p_y_given_x() -> None:
    cfg = family_config("covariate", 0.9, scenarios=("A", "B"), seed=6, **SMALL)
    sc = generate(cfg)
    a, b = sc["A"], sc["B"]
    freq = [
        np.bincount(s.train.categorical[:, 6], minlength=ALIEXPRESS.vocab_sizes[6]) / 3000
        for s in (a, b)
    ]
    assert 0.5 * np.abs(freq[0] - freq[1]).sum() > 0.3  # P(x) differs a lot
    for x in (a.test, b.test):  # same x -> same true probabilities in both scenarios
        np.testing.assert_allclose(
            a.oracle(x.categorical, x.numerical), b.oracle(x.categorical, x.numerical), rtol=1e-12
        )
    np.testing.assert_array_equal(a.oracle(a.test.categorical, a.test.numerical), a.test_oracle)
    # the check can fail: under concept shift the same rows get different probabilities
    sc = generate(family_config("concept", 0.8, scenarios=("A", "B"), seed=6, **SMALL))
    x = sc["A"].test
    pa, pb = (sc[n].oracle(x.categorical, x.numerical)[:, 0] for n in ("A", "B"))
    assert np.corrcoef(logit(pa), logit(pb))[0, 1] < 0.5


# ------------------------------------------------------------------------ field-pair generator


def test_fieldpair_is_deterministic_consistent_and_loadable(tmp_path: Path) -> None:
    kw = {"scenarios": ("NL", "ES"), "train_rows": 4000, "test_rows": 1000}
    synthesize_family(tmp_path / "a", "fieldpair", 0.8, seed=3, **kw)
    synthesize_family(tmp_path / "b", "fieldpair", 0.8, seed=3, **kw)
    synthesize_family(tmp_path / "c", "fieldpair", 0.8, seed=4, **kw)
    a, b, c = files_of(tmp_path / "a"), files_of(tmp_path / "b"), files_of(tmp_path / "c")
    assert sorted(a) == [
        "ES/test.csv",
        "ES/test.oracle.parquet",
        "ES/train.csv",
        "NL/test.csv",
        "NL/test.oracle.parquet",
        "NL/train.csv",
        "synth.json",
    ]
    assert a == b and all(a[k] != c[k] for k in a)
    meta = json.loads(a["synth.json"])
    assert meta["generator"] == "msmtrec.data.synth_fieldpair"
    assert meta["family"] == {"name": "fieldpair", "strength": 0.8, "held_out": True}
    assert list_scenarios(tmp_path / "a") == ["ES", "NL"]
    for name in ("NL", "ES"):
        splits = load_scenario(tmp_path / "a", name)
        train = load_split(tmp_path / "a" / name / "train.csv")
        assert (train.labels[:, 1] <= train.labels[:, 0]).all()
        assert train.labels[:, 0].mean() == pytest.approx(0.08, abs=0.015)
        assert train.labels[:, 1].mean() == pytest.approx(0.012, abs=0.005)
        assert (train.categorical < np.asarray(ALIEXPRESS.vocab_sizes)).all()
        assert ((train.numerical >= 0) & (train.numerical <= 1)).all()
        oracle = load_oracle(tmp_path / "a", name)
        assert oracle.shape == (len(splits.test), 2) and (oracle[:, 1] <= oracle[:, 0]).all()
        assert meta["scenarios"][name]["oracle_test_auc"]["ctr"] > 0.7


def test_fieldpair_rotation_strength_decides_how_alike_scenarios_are() -> None:
    def alike(shift: float) -> float:
        cfg = FieldPairConfig(
            scenarios=("A", "B"), train_rows=1500, test_rows=1500, concept_shift=shift, seed=2
        )
        sc = generate_fieldpair(cfg)
        x = sc["A"].test
        pa, pb = (sc[n].oracle(x.categorical, x.numerical)[:, 0] for n in ("A", "B"))
        np.testing.assert_array_equal(
            sc["A"].oracle(x.categorical, x.numerical), sc["A"].test_oracle
        )
        return float(np.corrcoef(logit(pa), logit(pb))[0, 1])

    same, low, high = alike(0.0), alike(0.2), alike(0.8)
    assert same > 0.999  # only the intercepts differ (calibrated per scenario)
    assert 0.6 < low < same and high < 0.4


# ------------------------------------------------------------------------ CLI


def test_cli_family_writes_what_the_api_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--train-rows", "1500", "--test-rows", "300", "--scenarios", "A", "B"]
    argv = ["data", "synth", "--out", str(tmp_path / "cli"), "--family", "quantity"]
    assert _cli([*argv, "--strength", "1", *base]) == 0
    assert "B" in capsys.readouterr().out
    synthesize_family(
        tmp_path / "api", "quantity", 1.0, train_rows=1500, test_rows=300, scenarios=("A", "B")
    )
    assert files_of(tmp_path / "cli") == files_of(tmp_path / "api")
    assert len(load_scenario(tmp_path / "cli", "B").test) == 300

    # an explicit knob flag overrides the family; the family's other settings stay
    out = tmp_path / "override"
    argv = ["data", "synth", "--out", str(out), "--family", "concept", "--concept-shift", "0.1"]
    assert _cli([*argv, *base]) == 0
    config = json.loads((out / "synth.json").read_text())["config"]
    assert (config["concept_shift"], config["covariate_shift"]) == (0.1, 0.1)

    assert (
        _cli(["data", "synth", "--out", str(tmp_path / "fp"), "--family", "fieldpair", *base]) == 0
    )
    assert json.loads((tmp_path / "fp" / "synth.json").read_text())["family"]["held_out"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--family", "concept", "--strength", "2"], "--strength"),
        (["--strength", "0.5"], "--strength"),
        (["--family", "fieldpair", "--task-conflict", "0.5"], "--task-conflict"),
        (["--quantity-skew", "0.5"], "quantity_skew"),
    ],
)
def test_cli_bad_family_options_fail_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert _cli(["data", "synth", "--out", str(tmp_path), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "synth.json").exists()


def test_cli_unknown_family_is_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _cli(["data", "synth", "--out", str(tmp_path), "--family", "nope"])
    assert "--family" in capsys.readouterr().err
