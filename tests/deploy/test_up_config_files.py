"""``msmtrec up`` hands each child one config file (not hand-built flags): written 0600,
validated with the child's own settings model before anything starts, read by the child
through ``--config FILE``; a bad field names itself."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx
import pytest

from msmtrec.experiment import ExperimentSettings
from msmtrec_app.cli import build_parser, main
from msmtrec_app.commands.up.children import ChildConfig, overriding_env, validate_config
from msmtrec_app.commands.up.common import UpError
from msmtrec_app.supervisor import ServiceProcess, stop_all

FLAGS = ["--rows", "40", "--rounds", "2", "--method", "fedavg", "--lr", "0.01",
         "--dp-epsilon", "8", "--scenarios", "NL", "ES",
         "--grpc-port", "0", "--status-port", "0", "--gateway-port", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> Path:
    """A real ``up --dry-run``: data, tokens and every child's config file, nothing started."""
    run_dir = tmp_path_factory.mktemp("up")
    assert main(["up", "--dry-run", "--run-dir", str(run_dir), *FLAGS]) == 0
    return run_dir


def _service_settings(role: str, path: Path):
    """The settings the service's own command reads from the file (its CLI path)."""
    from servicekit.settings import load_settings, overrides_from_args

    args = build_parser().parse_args([role, "--config", str(path)])
    cls = ChildConfig(role, role, {}, path).settings_class()
    return load_settings(cls, args.config, overrides_from_args(args))


def test_dry_run_writes_one_private_config_per_child_and_starts_nothing(dry_run, capsys):
    files = sorted(p.name for p in (dry_run / "config").iterdir())
    assert files == ["aggregator.json", "client-ES.json", "client-NL.json", "gateway.json"]
    for path in (dry_run / "config").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        text = path.read_text()
        for token_file in (dry_run / "secrets").glob("*.token"):  # paths, never a token
            assert token_file.read_text().strip() not in text
    state = json.loads((dry_run / "up.json").read_text())
    assert (state["phase"], state["children"]) == ("dry-run", {})


def test_each_service_reads_its_file_with_the_experiment_up_was_given(dry_run):
    experiment = ExperimentSettings(method="fedavg", rounds=2, lr=0.01, dp_epsilon=8.0)
    agg = _service_settings("aggregator", dry_run / "config" / "aggregator.json")
    assert agg.spec() == experiment.spec()
    assert (agg.scenarios, agg.min_clients) == (["NL", "ES"], 2)
    client = _service_settings("client", dry_run / "config" / "client-NL.json")
    assert (client.scenario, client.privacy()) == ("NL", experiment.privacy())
    assert client.token_file == dry_run.resolve() / "secrets" / "NL.token"
    gateway = _service_settings("gateway", dry_run / "config" / "gateway.json")
    assert gateway.registry == dry_run.resolve() / "registry"


def test_a_flag_overrides_the_file(dry_run):
    from aggregator.settings import AggregatorSettings
    from servicekit.settings import load_settings, overrides_from_args

    path = dry_run / "config" / "aggregator.json"
    args = build_parser().parse_args(["aggregator", "--config", str(path), "--rounds", "5"])
    assert load_settings(AggregatorSettings, args.config, overrides_from_args(args)).rounds == 5


def test_a_child_started_by_its_file_serves_the_files_settings(dry_run, monkeypatch, tmp_path):
    """A real aggregator process started as up starts it: ``aggregator --config FILE``; a
    variable that would override a key of the file is kept from it (the file wins, as up's
    flags used to)."""
    config = ChildConfig(
        "aggregator", "aggregator", {"rounds": 2}, dry_run / "config" / "aggregator.json"
    )
    values = json.loads(config.path.read_text())
    config.values = values
    monkeypatch.setenv("MSMTREC_AGGREGATOR_ROUNDS", "7")
    child = ServiceProcess(
        "aggregator", ["aggregator", "--config", str(config.path)], tmp_path / "agg.log",
        role="aggregator", unset_env=overriding_env(config),
    )  # fmt: skip
    child.start()
    try:
        url = f"http://127.0.0.1:{values['status_port']}/v1/status"
        end, status = time.monotonic() + 60, None
        while time.monotonic() < end and status is None:
            assert child.poll() is None, child.tail()
            try:
                status = httpx.get(url, timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.2)
        assert status is not None, child.tail()
        assert (status["total_rounds"], status["method"]) == (2, "fedavg")
        assert status["scenarios"] == ["ES", "NL"]
    finally:
        stop_all([child], 10.0)


@pytest.mark.parametrize(
    ("role", "change", "field"),
    [
        ("aggregator", {"rounds": 0}, "rounds"),
        ("aggregator", {"roundz": 3}, "roundz"),
        ("client", {"dp_delta": "tiny"}, "dp_delta"),
        ("gateway", {"max_batch": 0}, "max_batch"),
        ("gateway", {"max_batchh": 10}, "max_batchh"),
    ],
)
def test_a_bad_field_in_a_file_is_an_error_naming_it(
    dry_run, tmp_path, capsys, role, change, field
):
    name = {"aggregator": "aggregator", "client": "client-NL", "gateway": "gateway"}[role]
    values = {**json.loads((dry_run / "config" / f"{name}.json").read_text()), **change}
    bad = tmp_path / f"{name}.json"
    bad.write_text(json.dumps(values))
    # up's check before it starts anything
    with pytest.raises(UpError) as info:
        validate_config(ChildConfig(name, role, values, bad))
    assert f"{field}: " in str(info.value) and str(bad) in str(info.value)
    # and the service itself, started on the file: refused at start, naming the field
    assert main([role, "--config", str(bad)]) != 0
    out = capsys.readouterr().out
    assert "invalid settings" in out and field in out


def test_up_refuses_a_bad_experiment_value_before_writing_anything(tmp_path, capsys):
    run_dir = tmp_path / "up"
    assert main(["up", "--dry-run", "--run-dir", str(run_dir), "--preset", "huge"]) == 2
    assert "preset: " in capsys.readouterr().out
    assert not run_dir.exists()


def test_up_spec_reaches_the_aggregator_every_client_and_the_gateway(tmp_path):
    """``up --spec FILE --data DIR``: the aggregator's federation spec carries the schema,
    each client reads its data with it (and joins with it), the gateway serves its names."""
    from msmtrec.data.spec_file import load_spec

    spec = tmp_path / "tiny.toml"
    spec.write_text(
        'name = "tiny"\n[[categorical]]\nname = "item"\nvocab_size = 9\n'
        '[[numerical]]\nname = "price"\n'
        '[[tasks]]\nname = "click"\nlabel = "click"\n'
        '[[tasks]]\nname = "buy"\nlabel = "buy"\nparent = "click"\n'
    )
    data = tmp_path / "data" / "S"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.csv").write_text("search_id,item,price,click,buy\n1,3,0.5,1,0\n")
    run_dir = tmp_path / "run"
    args = ["up", "--dry-run", "--run-dir", str(run_dir), "--data", str(tmp_path / "data"),
            "--spec", str(spec), "--grpc-port", "0", "--status-port", "0",
            "--gateway-port", "0"]  # fmt: skip
    assert main(args) == 0
    schema = load_spec(spec)
    agg = _service_settings("aggregator", run_dir / "config" / "aggregator.json")
    assert agg.spec().schema == schema
    client = _service_settings("client", run_dir / "config" / "client-S.json")
    assert client.dataset == str(spec.resolve())
    gateway = _service_settings("gateway", run_dir / "config" / "gateway.json")
    assert gateway.feature_schema() == schema
    # the synthetic data up writes is AliExpress-layout: another spec needs --data
    assert main(["up", "--dry-run", "--run-dir", str(tmp_path / "r2"), "--spec", "tenrec"]) != 0
