"""Service settings: one model per service; flag > env > config file > default; documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from aggregator.settings import AggregatorSettings
from msmtrec_app.cli import build_parser
from scenario_client.settings import ClientSettings
from servicekit.settings import load_settings, overrides_from_args, settings_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "FEDERATION.md"


def _load(argv: list[str], cls=AggregatorSettings):
    args = build_parser().parse_args(argv)
    return load_settings(cls, args.config, overrides_from_args(args))


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_flag_beats_env_beats_file_beats_default(tmp_path, monkeypatch, fmt):
    body = {
        "yaml": "aggregator:\n  port: 1111\n  rounds: 4\n  seed: 9\n  scenarios: [NL, ES]\n",
        "toml": '[aggregator]\nport = 1111\nrounds = 4\nseed = 9\nscenarios = ["NL", "ES"]\n',
        "json": '{"port": 1111, "rounds": 4, "seed": 9, "scenarios": ["NL", "ES"]}',
    }[fmt]
    config = tmp_path / f"aggregator.{fmt}"
    config.write_text(body)
    monkeypatch.setenv("MSMTREC_AGGREGATOR_ROUNDS", "5")
    monkeypatch.setenv("MSMTREC_AGGREGATOR_SEED", "7")
    s = _load(["aggregator", "--config", str(config), "--seed", "3", "--insecure-dev"])
    assert (s.port, s.rounds, s.seed) == (1111, 5, 3)
    assert s.min_clients == 2 and s.insecure_dev and s.scenarios == ["NL", "ES"]
    assert s.spec().seed == 3 and s.spec().rounds == 5


def test_unknown_config_keys_and_bad_values_are_errors(tmp_path):
    config = tmp_path / "a.yaml"
    config.write_text("aggregator:\n  prot: 1\n")
    with pytest.raises(ValidationError, match="prot"):
        _load(["aggregator", "--config", str(config)])
    with pytest.raises(ValidationError, match="min_clients"):
        _load(["aggregator", "--min-clients", "0"])


def test_tokens_never_come_from_flags_and_are_masked(monkeypatch):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["aggregator", "--tokens", "{}"])
    monkeypatch.setenv("MSMTREC_AGGREGATOR_TOKENS", '{"NL": "a-long-secret-token-123"}')
    s = _load(["aggregator"])
    assert s.tokens["NL"].get_secret_value() == "a-long-secret-token-123"
    assert "a-long-secret" not in repr(s) and "a-long-secret" not in str(s.public_dict())
    monkeypatch.setenv("MSMTREC_CLIENT_TOKEN", "another-secret-token-456")
    c = _load(["client", "--scenario", "NL", "--data", "d"], ClientSettings)
    assert c.bearer_token() == "another-secret-token-456"
    assert "another-secret" not in str(c.public_dict())


def test_client_requires_scenario_and_data():
    with pytest.raises(ValidationError, match="scenario"):
        _load(["client", "--data", "d"], ClientSettings)


@pytest.mark.parametrize("cls", [AggregatorSettings, ClientSettings])
def test_docs_list_every_setting_with_its_default(cls):
    """docs/FEDERATION.md embeds the generated tables; regenerate with
    `msmtrec aggregator settings-table` (and the client's) when a knob changes."""
    text = DOCS.read_text()
    section = re.search(
        rf"<!-- settings:{cls.section} -->\n(.*?)<!-- /settings:{cls.section} -->", text, re.S
    )
    assert section, f"docs/FEDERATION.md lacks the {cls.section} settings table"
    assert section.group(1) == settings_table(cls)


def test_a_misspelt_environment_variable_is_refused_with_a_suggestion(monkeypatch):
    monkeypatch.setenv("MSMTREC_AGGREGATOR_TLS_CLIENTCA", "ca.pem")  # mutual TLS silently off
    monkeypatch.setenv("MSMTREC_AGGREGATOR_CONFIG", "agg.yaml")  # the config file: allowed
    monkeypatch.setenv("MSMTREC_AGGREGATOR_ROUNDS", "3")
    with pytest.raises(ValueError) as info:
        load_settings(AggregatorSettings, None, {"insecure_dev": True, "scenarios": ["A"]})
    # only the misspelt one (singular): the config-file variable and real settings pass
    assert str(info.value).startswith(
        "unknown environment variable MSMTREC_AGGREGATOR_TLS_CLIENTCA "
        "(did you mean MSMTREC_AGGREGATOR_TLS_CLIENT_CA?): no setting has that name"
    )
    monkeypatch.delenv("MSMTREC_AGGREGATOR_TLS_CLIENTCA")
    settings = load_settings(AggregatorSettings, None, {"insecure_dev": True, "scenarios": ["A"]})
    assert settings.rounds == 3


def test_the_gateway_refuses_unknown_environment_variables(monkeypatch, tmp_path, capsys):
    from msmtrec_app.cli import main

    monkeypatch.setenv("MSMTREC_GATEWAY_MAXBATCH", "10")
    assert main(["gateway", "--registry", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "MSMTREC_GATEWAY_MAXBATCH (did you mean MSMTREC_GATEWAY_MAX_BATCH?)" in out


def test_gateway_docs_list_every_setting_and_its_flags_name_the_variable():
    """docs/GATEWAY.md embeds the gateway's generated table; its --help names every variable."""
    from gateway.settings import GatewaySettings
    from msmtrec_app.cli import build_parser

    text = (DOCS.parent / "GATEWAY.md").read_text()
    section = re.search(r"<!-- settings:gateway -->\n(.*?)<!-- /settings:gateway -->", text, re.S)
    assert section and section.group(1) == settings_table(GatewaySettings)
    sub = build_parser()._subparsers._group_actions[0].choices["gateway"]
    helps = {a.option_strings[0]: a.help for a in sub._actions if a.option_strings}
    for name in GatewaySettings.model_fields:
        flag = "--" + name.replace("_", "-")
        assert f"env MSMTREC_GATEWAY_{name.upper()}" in helps[flag], flag
