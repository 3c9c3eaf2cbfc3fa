"""Synthetic generator: determinism, calibrated rates, schema validity, and the property the
research question needs (concept shift decides whether another scenario's model transfers)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from msmtrec.data import ALIEXPRESS, ScenarioData, list_scenarios, load_scenario, load_split
from msmtrec.data.cli import register
from msmtrec.data.synth import SynthConfig, generate, synthesize

SMALL = {"train_rows": 3000, "test_rows": 1000}


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, fmt: str) -> None:
    cfg = SynthConfig(scenarios=("NL", "ES"), seed=7, fmt=fmt, **SMALL)
    synthesize(tmp_path / "a", cfg)
    synthesize(tmp_path / "b", cfg)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert sorted(a) == sorted(
        [
            "ES/test." + fmt,
            "ES/test.oracle.parquet",
            "ES/train." + fmt,
            "NL/test." + fmt,
            "NL/test.oracle.parquet",
            "NL/train." + fmt,
            "synth.json",
        ]
    )
    assert a == b
    synthesize(tmp_path / "c", SynthConfig(scenarios=("NL", "ES"), seed=8, fmt=fmt, **SMALL))
    c = files_of(tmp_path / "c")
    assert all(a[k] != c[k] for k in a)


def test_scenarios_are_independent_of_each_other() -> None:
    """Adding a scenario (or reordering) must not change another one's data."""
    one = generate(SynthConfig(scenarios=("NL",), seed=3, **SMALL))["NL"]
    two = generate(SynthConfig(scenarios=("ES", "NL"), seed=3, **SMALL))["NL"]
    np.testing.assert_array_equal(one.train.numerical, two.train.numerical)
    np.testing.assert_array_equal(one.test.labels, two.test.labels)


def test_written_files_load_and_match_schema(tmp_path: Path) -> None:
    cfg = SynthConfig(scenarios=("NL", "ES", "FR"), seed=1, **SMALL)
    summary = synthesize(tmp_path, cfg)
    mem = generate(cfg)
    assert list_scenarios(tmp_path) == ["ES", "FR", "NL"]
    on_disk = json.loads((tmp_path / "synth.json").read_text())
    assert on_disk == summary
    assert on_disk["config"]["concept_shift"] == cfg.concept_shift
    vocab = np.asarray(ALIEXPRESS.vocab_sizes)
    for name in cfg.scenarios:
        data = load_split(tmp_path / name / "train.csv")
        np.testing.assert_array_equal(data.categorical, mem[name].train.categorical)
        np.testing.assert_array_equal(data.numerical, mem[name].train.numerical)
        np.testing.assert_array_equal(data.labels, mem[name].train.labels)
        assert (data.categorical >= 0).all() and (data.categorical < vocab).all()
        assert data.oov_counts.sum() == 0
        assert (data.numerical >= 0).all() and (data.numerical <= 1).all()
        assert 0.1 < (data.numerical == 0).mean() < 0.5  # exact zeros, like the real data
        assert (data.labels[:, 1] <= data.labels[:, 0]).all()
        stats = summary["scenarios"][name]
        assert stats["train_rows"] == 3000 and stats["test_rows"] == 1000
        assert stats["train_ctr"] == pytest.approx(data.labels[:, 0].mean(), abs=1e-6)
    splits = load_scenario(tmp_path, "NL")
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (2700, 300, 1000)


@pytest.mark.parametrize(("ctr", "cvr"), [(0.08, 0.15), (0.03, 0.05), (0.3, 0.5)])
def test_realized_rates_match_targets(ctr: float, cvr: float) -> None:
    cfg = SynthConfig(scenarios=("A", "B"), train_rows=20_000, test_rows=2000, ctr=ctr, cvr=cvr)
    for sc in generate(cfg).values():
        lab = sc.train.labels
        assert lab[:, 0].mean() == pytest.approx(ctr, rel=0.08, abs=0.002)
        assert lab[:, 1].mean() == pytest.approx(ctr * cvr, rel=0.15, abs=0.001)
        assert (lab[:, 1] <= lab[:, 0]).all()
        assert sc.test.labels[:, 0].mean() == pytest.approx(ctr, rel=0.2, abs=0.005)


def test_task_correlation_and_imbalance() -> None:
    for rho in (-0.6, 0.0, 0.9):
        cfg = SynthConfig(scenarios=("A",), task_correlation=rho, **SMALL)
        got = generate(cfg)["A"].stats["latent_task_correlation"]
        assert got == pytest.approx(rho, abs=0.02)
    cfg = SynthConfig(scenarios=("A", "B", "C"), imbalance=0.5, **SMALL)
    rows = [len(s.train) for s in generate(cfg).values()]
    assert rows == [3000, round(3000 * np.exp(-0.5)), round(3000 * np.exp(-1.0))]


def _freq(data: ScenarioData, field: int) -> np.ndarray:
    v = ALIEXPRESS.vocab_sizes[field]
    return np.bincount(data.categorical[:, field], minlength=v) / len(data)


def test_covariate_shift_changes_feature_distributions() -> None:
    def distance(shift: float) -> tuple[float, float]:
        sc = generate(SynthConfig(scenarios=("A", "B"), covariate_shift=shift, seed=2, **SMALL))
        a, b = sc["A"].train, sc["B"].train
        tv = 0.5 * np.abs(_freq(a, 6) - _freq(b, 6)).sum()
        mean_gap = float(np.abs(a.numerical.mean(0) - b.numerical.mean(0)).mean())
        return tv, mean_gap

    tv0, gap0 = distance(0.0)
    tv1, gap1 = distance(1.0)
    assert tv0 < 0.1 and tv1 > 0.3
    assert gap1 > 3 * gap0


def _design(data: ScenarioData, enc: OneHotEncoder) -> sparse.csr_matrix:
    return sparse.hstack([enc.transform(data.categorical), data.numerical]).tocsr()


def _lr_aucs(concept_shift: float) -> tuple[float, float, float]:
    """(A's own test AUC, B's own test AUC, A's model on B's test) for the click task."""
    cfg = SynthConfig(
        scenarios=("A", "B"),
        train_rows=8000,
        test_rows=4000,
        ctr=0.2,
        concept_shift=concept_shift,
        covariate_shift=0.3,
        seed=11,
    )
    sc = generate(cfg)
    enc = OneHotEncoder(categories=[np.arange(v + 1) for v in ALIEXPRESS.vocab_sizes])
    enc.fit(np.zeros((1, ALIEXPRESS.num_categorical), dtype=np.int64))
    models = {
        n: LogisticRegression(solver="liblinear").fit(_design(s.train, enc), s.train.labels[:, 0])
        for n, s in sc.items()
    }

    def auc(model: str, data: str) -> float:
        test = sc[data].test
        return roc_auc_score(
            test.labels[:, 0], models[model].predict_proba(_design(test, enc))[:, 1]
        )

    return auc("A", "A"), auc("B", "B"), auc("A", "B")


def test_concept_shift_decides_transfer() -> None:
    own_a, own_b, a_on_b = _lr_aucs(0.0)
    assert 0.65 < own_a < 0.9 and 0.65 < own_b < 0.9  # learnable, but far from perfect
    assert abs(a_on_b - own_b) < 0.03  # shared function: A's model is as good on B
    own_a, own_b, a_on_b = _lr_aucs(1.0)
    assert 0.65 < own_a < 0.9 and 0.65 < own_b < 0.9
    assert own_b - a_on_b > 0.15  # unrelated functions: A's model is useless on B


def test_config_validation() -> None:
    for bad in (
        {"concept_shift": 1.5},
        {"task_correlation": -2},
        {"ctr": 0.0},
        {"cvr": 1.0},
        {"fmt": "json"},
        {"scenarios": ("A", "A")},
        {"scenarios": ("../x",)},
        {"train_rows": 0},
    ):
        with pytest.raises(ValueError):
            generate(SynthConfig(**{**SMALL, **bad}))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="msmtrec")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_synth_has_every_knob_and_writes_what_the_api_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    synth_parser = parser._subparsers._group_actions[0].choices["data"]  # type: ignore[union-attr]
    synth_parser = synth_parser._subparsers._group_actions[0].choices["synth"]
    dests = {a.dest for a in synth_parser._actions}
    assert {f.name for f in dataclasses.fields(SynthConfig)} <= dests

    argv = ["data", "synth", "--out", str(tmp_path / "cli"), "--scenarios", "NL,ES", "FR"]
    argv += ["--train-rows", "2000", "--test-rows", "500", "--concept-shift", "0.7"]
    argv += ["--covariate-shift", "0.1", "--task-correlation", "-0.2", "--ctr", "0.1"]
    argv += ["--cvr", "0.2", "--imbalance", "0.1", "--signal", "1.0", "--test-drift", "0.05"]
    argv += ["--seed", "5", "--format", "parquet"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "NL" in out and "FR" in out and "click rate" in out
    cfg = SynthConfig(
        scenarios=("NL", "ES", "FR"), train_rows=2000, test_rows=500, concept_shift=0.7,
        covariate_shift=0.1, task_correlation=-0.2, ctr=0.1, cvr=0.2, imbalance=0.1,
        signal=1.0, test_drift=0.05, seed=5, fmt="parquet",
    )  # fmt: skip
    synthesize(tmp_path / "api", cfg)
    assert files_of(tmp_path / "cli") == files_of(tmp_path / "api")

    assert _cli(["data", "validate", str(tmp_path / "cli")]) == 0
    assert "ok" in capsys.readouterr().out
    assert _cli(["data", "synth", "--out", str(tmp_path / "bad"), "--concept-shift", "2"]) == 1
    assert "concept_shift" in capsys.readouterr().err
