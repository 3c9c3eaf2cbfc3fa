"""One CLI vocabulary: every flag of every command says what it does, its default and its
environment variable; one name per concept (``--method``); help text is plain text."""

from __future__ import annotations

import argparse

import pytest

from msmtrec_app.cli import SERVICE_COMMANDS, _subparsers, build_parser, env_name


def _commands():
    return list(_subparsers(build_parser()))


def _flags(sub: argparse.ArgumentParser):
    for action in sub._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        yield action


def test_every_flag_has_help_default_and_environment_variable():
    missing = []
    for path, sub in _commands():
        for action in _flags(sub):
            text = action.help or ""
            flag = f"{' '.join(path)} {action.option_strings[0]}"
            words = text.split("(")[0].strip()
            if not words:
                missing.append(f"{flag}: no help")
            if "default" not in text:
                missing.append(f"{flag}: no default")
            if "env " not in text and not (
                path[0] in SERVICE_COMMANDS and not action.dest.startswith("setting__")
                and action.dest != "config"
            ):  # fmt: skip
                missing.append(f"{flag}: no environment variable")
    assert missing == []


def test_help_is_plain_text():
    for path, sub in _commands():
        texts = [sub.description or "", *((a.help or "") for a in sub._actions)]
        assert not [t for t in texts if "``" in t], path


def test_method_is_the_one_name():
    commands = dict(_commands())
    for name in ("simulate", "demo", "up", "aggregator"):
        options = {o for a in commands[(name,)]._actions for o in a.option_strings}
        assert "--method" in options, name
        shown = commands[(name,)].format_help()
        assert "--strategy" not in shown, name
    # scripts written before the rename still run
    args = build_parser().parse_args(["simulate", "--data", ".", "--strategy", "fedavg"])
    assert args.method == "fedavg"


def test_environment_sets_defaults_and_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("MSMTREC_SIMULATE_ROUNDS", "3")
    monkeypatch.setenv("MSMTREC_SIMULATE_DATA", str(tmp_path))  # a required flag, from env
    monkeypatch.setenv("MSMTREC_SIMULATE_PLOT", "yes")
    monkeypatch.setenv("MSMTREC_SIMULATE_SCENARIOS", "NL,ES")
    args = build_parser().parse_args(["simulate"])
    assert (args.rounds, args.data, args.plot, args.scenarios) == (3, tmp_path, True, ["NL", "ES"])
    args = build_parser().parse_args(["simulate", "--rounds", "7"])
    assert args.rounds == 7
    assert env_name(("deploy", "dev-secrets"), "out") == "MSMTREC_DEPLOY_DEV_SECRETS_OUT"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MSMTREC_SIMULATE_ROUNDS", "three", "MSMTREC_SIMULATE_ROUNDS='three'"),
        ("MSMTREC_SIMULATE_METHOD", "fedmagic", "choose from"),
        ("MSMTREC_SIMULATE_PLOT", "maybe", "expected one of"),
    ],
)
def test_a_bad_environment_value_names_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        build_parser()
    assert message in str(info.value)


def test_aggregator_tool_is_shown_optional():
    usage = dict(_commands())[("aggregator",)].format_usage()
    assert "[TOOL]" in usage
