"""The in-process federation end to end: CLI, reports, determinism, every method runs."""

from __future__ import annotations

import json

import pytest

from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec.federation.config import METHODS
from msmtrec.simulation import SimulationConfig, load_splits, run_simulation
from msmtrec.training.trainer import TrainConfig
from msmtrec_app.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synthesize(
        out,
        SynthConfig(
            scenarios=("NL", "ES", "FR"), train_rows=1500, test_rows=600, ctr=0.2, cvr=0.3, seed=3
        ),
    )
    return out


@pytest.fixture(scope="module")
def splits(synth_dir):
    return load_splits(synth_dir, None, 0.1)


def _config(synth_dir, method, **kw):
    return SimulationConfig(
        synth_dir, method=method, rounds=2, seed=5, train=TrainConfig(batch_size=256), **kw
    )


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_reports_every_scenario_and_task(synth_dir, splits, method):
    res = run_simulation(_config(synth_dir, method), splits=splits, log=lambda _m: None)
    assert [r.round for r in res.history] == [1, 2]
    assert set(res.best.test) == {"ES", "FR", "NL"}
    for per_task in res.best.test.values():
        assert set(per_task) == {"ctr", "ctcvr"}
        assert per_task["ctr"]["auc"] is not None and 0.0 < per_task["ctr"]["auc"] < 1.0
    assert res.best_round == max(res.history, key=lambda r: r.mean_valid_auc).round


def test_same_seed_same_numbers_different_seed_differs(synth_dir, splits):
    a = run_simulation(_config(synth_dir, "pfmsmtrec"), splits=splits, log=lambda _m: None)
    b = run_simulation(_config(synth_dir, "pfmsmtrec"), splits=splits, log=lambda _m: None)
    assert a.to_dict()["history"] == _without_seconds(b.to_dict()["history"], a)
    cfg = _config(synth_dir, "pfmsmtrec")
    cfg.seed = 6
    c = run_simulation(cfg, splits=splits, log=lambda _m: None)
    assert c.history[-1].valid != a.history[-1].valid


def _without_seconds(history, ref):
    """Durations differ run to run; everything else must be identical."""
    for rec, ref_rec in zip(history, ref.to_dict()["history"], strict=True):
        rec["seconds"] = ref_rec["seconds"]
    return history


def test_cli_prints_table_and_writes_reports(synth_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--data",
            str(synth_dir),
            "--method",
            "pfmsmtrec",
            "--rounds",
            "2",
            "--batch-size",
            "256",
            "--out",
            str(out),
            "--plot",
            "--threads",
            "1",
            "--tensorboard",
            str(tmp_path / "tb"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "round   1/2" in printed and "round   2/2" in printed
    assert "| **mean** (macro over scenarios) |" in printed
    report = json.loads((out / "results.json").read_text())
    assert report["selected_by"].startswith("mean validation AUC")
    assert set(report["test"]) == {"ES", "FR", "NL"}
    assert (out / "results.md").read_text().count("| NL |") == 1
    assert (out / "auc_per_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the dashboard's static report: self-contained (no src/href to anywhere), the run inlined
    html = (out / "report.html").read_text()
    assert "window.MSMTREC_REPORT = " in html
    assert 'src="' not in html and 'href="http' not in html and "@import" not in html
    embedded = html.split("window.MSMTREC_REPORT = ", 1)[1].split(";</script>", 1)[0]
    assert json.loads(embedded)["history"] == json.loads(json.dumps(report["history"]))
    # --tensorboard: every scenario × task AUC, the loss and the personalization per round
    from helpers.tensorboard import read_scalars

    scalars = read_scalars(tmp_path / "tb")
    for s in ("ES", "FR", "NL"):
        for task in ("ctr", "ctcvr"):
            got = scalars[f"auc/valid/{s}/{task}"]
            want = {r["round"]: r["valid"][s][task]["auc"] for r in report["history"]}
            assert got == pytest.approx(want, abs=1e-6)
        assert set(scalars[f"loss/train/{s}"]) == {1, 2}
    assert any(t.startswith("learn_from/") for t in scalars)
    assert any(t.startswith("personalization/a/") for t in scalars)


def test_cli_rejects_unknown_strategy(synth_dir, capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--data", str(synth_dir), "--method", "fedmagic"])
    assert "invalid choice" in capsys.readouterr().err


def test_simulate_flags_reach_the_federation_config(tmp_path):
    from msmtrec_app.cli import build_parser
    from msmtrec_app.commands.simulate import config_from_args

    def fed(*flags):
        args = build_parser().parse_args(["simulate", "--data", str(tmp_path), *flags])
        return config_from_args(args).federation()

    default = fed()
    assert (default.method, default.template_l2, default.mu) == ("pfmsmtrec", 3e-3, 1e-3)
    tuned = fed("--template-l2", "0.01", "--mu", "0.1", "--conflict", "pcgrad")
    assert (tuned.template_l2, tuned.mu, tuned.conflict) == (0.01, 0.1, "pcgrad")
    assert fed("--method", "pfmsmtrec-no-shrink").template_l2 == 0.0


def test_aggregator_settings_and_simulate_flags_resolve_the_same_experiment(tmp_path):
    """The network's spec and the simulation take the same knobs through one mapping, so a
    knob added to one cannot be silently missing from the other."""
    from aggregator.settings import AggregatorSettings
    from msmtrec_app.cli import build_parser
    from msmtrec_app.commands.simulate import config_from_args

    flags = "--template-l2 0.02 --mu 0.05 --conflict pcgrad --ca-alpha 0.3 --ca-rescale none"
    flags += " --template two_part --ctcvr-head esmm"
    args = build_parser().parse_args(["simulate", "--data", str(tmp_path), *flags.split()])
    settings = AggregatorSettings(
        insecure_dev=True, scenarios=["A"], template_l2=0.02, mu=0.05, conflict="pcgrad",
        ca_alpha=0.3, ca_rescale="none", template="two_part", ctcvr_head="esmm",
    )  # fmt: skip
    simulated, networked = config_from_args(args).resolved(), settings.spec().resolved()
    assert simulated == networked
    fed, model = networked
    assert (fed.template_l2, fed.mu, fed.conflict, fed.ca_alpha, fed.ca_rescale) == (
        0.02, 0.05, "pcgrad", 0.3, "none",
    )  # fmt: skip
    assert (fed.template, model.template, model.ctcvr_head) == ("two_part", "two_part", "esmm")
