"""The round record carries the server's personalization report (who learns from whom).

A real in-process Federation (no sockets) closes a round of two clients with different
deltas; the record's ``personalization`` is the Strategy's ``last_report``, typed, and it
survives history.json and the checkpoint (a restart reads it back).
"""

from __future__ import annotations

import json

import pytest
from helpers.processes import wait_until

from aggregator.checkpoint import CheckpointStore
from aggregator.federation import Federation
from aggregator.records import PersonalizationReport, RoundRecord
from aggregator.rounds import Phase
from msmtrec.codec import decode, encode
from msmtrec.spec import FederationSpec


def _close_one_round(fed: Federation, scenarios=("A", "B")) -> RoundRecord:
    for s in scenarios:
        fed.join(s, fed.spec_digest, fed.signature)
    fed.tick()
    wait_until(lambda: fed.status().phase is Phase.OPEN, 10, "the round to open")
    for i, s in enumerate(scenarios):
        payload = fed.payload(s).encoded
        start = decode(payload.specs, payload.buffer)
        # different directions per client, so attention and the CA plan are not uniform
        enc = encode(
            {n: t + 0.01 * (i + 1) * (1 + (t.numel() % (i + 2))) for n, t in start.items()},
            fed.strategy.names,
        )
        ticket = fed.begin_submission(
            s, fed.status().round, 10 * (i + 1), {"train_loss": 0.5}, enc.specs, len(enc.buffer)
        )
        fed.complete_submission(ticket, enc.buffer, len(enc.buffer))
    fed.tick()
    wait_until(lambda: fed.status().completed_rounds == 1, 30, "round 1 to close")
    return fed.rounds_list()[0]


def test_record_has_the_strategys_report_and_it_survives_history_and_checkpoint(tmp_path):
    spec = FederationSpec(rounds=2, method="pfmsmtrec")
    store = CheckpointStore(tmp_path / "ckpt")
    fed = Federation(
        spec, ["A", "B"], store, min_clients=2, start_wait=0,
        history_path=tmp_path / "history.json",
    )  # fmt: skip
    record = _close_one_round(fed)
    report = fed.strategy.last_report
    assert report, "pfmsmtrec personalizes on the server: the core must report it"
    p = record.personalization
    assert isinstance(p, PersonalizationReport)
    assert p.clients == ["A", "B"]
    # the typed model is the core's dict, number for number
    assert p.model_dump(mode="json", exclude_none=True) == json.loads(json.dumps(report))
    rows = p.learn_from.experts if p.learn_from.experts is not None else p.learn_from.towers
    assert set(rows) == {"A", "B"} and all(set(r) == {"A", "B"} for r in rows.values())
    assert p.a is not None and len({len(v) for v in p.a.values()}) == 1
    # history.json and the checkpoint both carry it; a restart reads it back
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc[0]["personalization"]["learn_from"] == json.loads(json.dumps(report["learn_from"]))
    again = Federation(
        spec, ["A", "B"], CheckpointStore(store.dir), min_clients=2,
        history_path=tmp_path / "history.json",
    )  # fmt: skip
    assert again.rounds_list()[0].personalization == p
    (tmp_path / "history.json").unlink()
    third = Federation(spec, ["A", "B"], CheckpointStore(store.dir), min_clients=2)
    assert third.rounds_list()[0].personalization == p  # from the checkpoint alone


@pytest.mark.parametrize("method", ["fedavg"])
def test_methods_without_server_personalization_record_none(tmp_path, method):
    spec = FederationSpec(rounds=1, method=method)
    fed = Federation(spec, ["A", "B"], CheckpointStore(tmp_path / "c"), min_clients=2, start_wait=0)
    record = _close_one_round(fed)
    assert record.personalization is None
    assert record.to_json_dict()["personalization"] is None


def test_an_old_record_without_the_field_still_reads():
    rec = RoundRecord.model_json_schema()
    assert "personalization" in rec["properties"]
    assert "personalization" not in rec.get("required", [])


def test_aggregator_tensorboard_event_files(tmp_path):
    """--tensorboard: the round's bytes, loss and personalization at its close; each
    scenario's AUC when its client reports the evaluation."""
    from helpers.tensorboard import read_scalars

    from aggregator.hooks import NoHooks
    from aggregator.tracking import TensorBoardHooks
    from servicekit.tracking import TensorBoardTracker

    hooks = TensorBoardHooks(NoHooks(), TensorBoardTracker(tmp_path / "tb"))
    fed = Federation(
        FederationSpec(rounds=2), ["A", "B"], CheckpointStore(tmp_path / "c"), min_clients=2,
        start_wait=0, hooks=hooks,
    )  # fmt: skip
    record = _close_one_round(fed)
    evals = {"valid": {"ctr": {"auc": 0.61, "logloss": 0.4, "n": 10, "positives": 2}}}
    fed.report_metrics("B", 1, evals, {})
    hooks.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["bytes/in"] == {1: float(record.bytes_in)}
    assert scalars["loss/train/A"] == {1: pytest.approx(0.5)}
    assert scalars["auc/valid/B/ctr"] == {1: pytest.approx(0.61)}
    learn = record.personalization.learn_from
    part = "experts" if learn.experts else "towers"
    rows = getattr(learn, part)
    assert scalars[f"learn_from/{part}/A/B"] == {1: pytest.approx(rows["A"]["B"], abs=1e-6)}


def test_aggregator_tensorboard_setting_is_a_flag_and_a_variable(monkeypatch, tmp_path):
    from aggregator.settings import AggregatorSettings
    from msmtrec_app.cli import build_parser
    from servicekit.settings import load_settings, overrides_from_args

    monkeypatch.setenv("MSMTREC_AGGREGATOR_TENSORBOARD", str(tmp_path / "env"))
    base = {"insecure_dev": True, "scenarios": ["A"]}
    assert load_settings(AggregatorSettings, None, base).tensorboard == tmp_path / "env"
    args = build_parser().parse_args(["aggregator", "--tensorboard", str(tmp_path / "flag")])
    flags = overrides_from_args(args)
    assert load_settings(AggregatorSettings, None, base | flags).tensorboard == tmp_path / "flag"
