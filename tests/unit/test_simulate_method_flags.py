"""simulate's method-form flags reach the experiment, and a knob the method lacks is one
clear line naming it (exit 2), not a traceback."""

from __future__ import annotations

import json

from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec_app.cli import main


def _data(tmp_path):
    out = tmp_path / "d"
    synthesize(out, SynthConfig(scenarios=("NL", "ES"), train_rows=600, test_rows=300, seed=3))
    return out


def test_form_flags_reach_the_recorded_federation_config(tmp_path):
    data, out = _data(tmp_path), tmp_path / "o"
    rc = main(["simulate", "--data", str(data), "--method", "pfmsmtrec", "--rounds", "1",
               "--personal-form", "add", "--hyper-grad", "raw", "--template", "additive3",
               "--attention-temperature", "0.5", "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert rc == 0
    fed = json.loads((out / "results.json").read_text())["config"]["federation"]
    assert fed["template"] == "additive3" and fed["attention_temperature"] == 0.5
    assert "personal_form" not in fed and "hyper_grad" not in fed  # the original forms


def test_a_knob_the_method_lacks_is_refused_naming_it(tmp_path, capsys):
    data = _data(tmp_path)
    out = str(tmp_path / "o")
    rc = main(["simulate", "--data", str(data), "--method", "pfmsmtrec", "--rounds", "1",
               "--ditto-lambda", "0.5", "--device", "cpu", "--out", out])  # fmt: skip
    assert rc == 2
    assert "ditto_lambda is not a knob of method 'pfmsmtrec'" in capsys.readouterr().err
