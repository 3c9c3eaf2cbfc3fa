"""The dashboard in a real headless browser (chromium via selenium), network cut.

Live: a real in-process Federation (three scenarios, pfmsmtrec) closes rounds; its clients'
evaluations are reported through the same call the gRPC service uses; the status API serves
it on 127.0.0.1. The page must load with no console error and no request leaving
127.0.0.1, show the round count, one AUC curve per scenario for each task and the "who
learns from whom" heatmap, and follow a newly closed round by itself (polling).

Static: ``msmtrec simulate`` on tiny data writes report.html next to results.json; opened
from disk it shows the same views with no request at all.

Screenshots are saved as artifacts (tmp dir, and $MSMTREC_ARTIFACTS when set).
"""

from __future__ import annotations

import json

import pytest
from helpers.browser import (
    console_errors,
    external,
    headless_chromium,
    requested_urls,
    save_artifact,
)
from helpers.processes import free_port, wait_until

from aggregator.checkpoint import CheckpointStore
from aggregator.dashboard import write_static_report
from aggregator.federation import Federation
from aggregator.rounds import Phase
from aggregator.status_api import StatusServer, create_app
from msmtrec.codec import decode, encode
from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec.spec import FederationSpec
from msmtrec_app.cli import main

SCENARIOS = ("NL", "ES", "FR")
TASKS = ("ctr", "ctcvr")


def _close_round(fed: Federation, r: int, *, private: bool = False) -> None:
    """One round: every scenario submits a distinct update; the round closes; each reports
    the evaluation of the model it received (numbers made up, shaped as clients send).
    ``private``: each submission also reports the ε it has spent (``dp_epsilon``), as a
    client with --dp-epsilon does, which the round record keeps."""
    wait_until(lambda: fed.status().phase is Phase.OPEN, 20, f"round {r} to open")
    for i, s in enumerate(SCENARIOS):
        payload = fed.payload(s).encoded
        start = decode(payload.specs, payload.buffer)
        enc = encode(
            {n: t + 0.003 * (i + 1) * (1 + (t.numel() % (i + 2))) for n, t in start.items()},
            fed.strategy.names,
        )
        metrics = {"train_loss": 0.5, "train_seconds": 0.2}
        if private:
            metrics["dp_epsilon"] = _epsilon(r, i)
        ticket = fed.begin_submission(
            s, r, 100 * (i + 1), metrics, enc.specs, len(enc.buffer)
        )  # fmt: skip
        fed.complete_submission(ticket, enc.buffer, len(enc.buffer))
    fed.tick()
    wait_until(lambda: fed.status().completed_rounds == r, 60, f"round {r} to close")
    for i, s in enumerate(SCENARIOS):
        auc = 0.60 + 0.02 * r + 0.01 * i
        evals = {
            split: {
                t: {"auc": auc - 0.005 * j, "logloss": 0.4, "n": 100, "positives": 10}
                for j, t in enumerate(TASKS)
            }
            for split in ("valid", "test")
        }
        fed.report_metrics(s, r, evals, {"eval_seconds": 0.1})


def _epsilon(r: int, i: int) -> float:
    return 0.5 * r + 0.1 * i


@pytest.fixture
def live_federation(tmp_path):
    fed = Federation(
        FederationSpec(rounds=4, method="pfmsmtrec"), list(SCENARIOS),
        CheckpointStore(tmp_path / "ckpt"), min_clients=3, start_wait=0,
    )  # fmt: skip
    for s in SCENARIOS:
        fed.join(s, fed.spec_digest, fed.signature)
    fed.tick()
    for r in (1, 2, 3):
        _close_round(fed, r)
    port = free_port()
    server = StatusServer(create_app(fed), "127.0.0.1", port)
    server.start()
    try:
        yield fed, f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _check_views(driver, rounds: int, total: int) -> None:
    wait_until(
        lambda: driver.find_element("id", "round-count").text == f"{rounds} / {total} rounds",
        30, f"the page to show {rounds} rounds",
    )  # fmt: skip
    for task in TASKS:
        curves = driver.find_elements("css selector", f"svg.auc-chart[data-task='{task}'] .curve")
        assert sorted(c.get_attribute("data-scenario") for c in curves) == sorted(SCENARIOS)
        # each curve has a point per round
        for c in curves:
            assert len(c.get_attribute("points").split()) == rounds, task
    cells = driver.find_elements("css selector", "#heatmap-body svg.heatmap rect.cell")
    assert len(cells) == len(SCENARIOS) ** 2
    assert len(driver.find_elements("css selector", "#rounds-table tbody tr")) == rounds
    assert len(driver.find_elements("css selector", "#clients-table tbody tr")) == len(SCENARIOS)
    text = driver.find_element("tag name", "body").text
    assert "[object" not in text and "undefined" not in text and "NaN" not in text


def test_live_dashboard_in_a_browser(live_federation, tmp_path):
    fed, base = live_federation
    with headless_chromium() as driver:
        driver.get(base + "/")  # redirects to /dashboard
        wait_until(
            lambda: driver.find_element("tag name", "body").get_attribute("data-loaded"),
            30, "the dashboard to load",
        )  # fmt: skip
        assert driver.current_url == base + "/dashboard"
        _check_views(driver, 3, 4)
        assert driver.find_element("id", "phase").text == "open"
        cells = driver.find_elements("css selector", "#clients-table td:nth-child(2)")
        states = [e.text for e in cells]
        assert states and all(s in ("live", "submitted") for s in states)
        assert not driver.find_element("id", "epsilon").is_displayed()  # no ε recorded yet
        # live update: the fourth round closes, the page follows without a reload; its
        # clients trained privately, so the round record's dp_epsilon puts ε on the page
        _close_round(fed, 4, private=True)
        _check_views(driver, 4, 4)
        assert fed.rounds_list()[-1].dp_epsilon == {
            s: _epsilon(4, i) for i, s in enumerate(SCENARIOS)
        }
        wait_until(lambda: driver.find_element("id", "epsilon").is_displayed(), 30, "ε badge")
        top = max(_epsilon(4, i) for i in range(len(SCENARIOS)))
        assert driver.find_element("id", "epsilon").text == f"ε spent {top:.3f}"
        wait_until(lambda: driver.find_element("id", "phase").text == "finished", 30, "finished")
        save_artifact(driver, tmp_path, "dashboard.png")
        urls = requested_urls(driver)
        errors = console_errors(driver)
    assert any(u.endswith("/v1/rounds") for u in urls), urls
    assert external(urls) == []
    assert errors == []


def test_simulate_writes_a_static_report_that_renders_offline(tmp_path):
    data = tmp_path / "data"
    synthesize(data, SynthConfig(scenarios=SCENARIOS, train_rows=600, test_rows=300, seed=1))
    out = tmp_path / "run"
    code = main(
        ["simulate", "--data", str(data), "--method", "pfmsmtrec", "--rounds", "2",
         "--batch-size", "256", "--out", str(out), "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    report = out / "report.html"
    html = report.read_text()
    assert "window.MSMTREC_REPORT" in html and 'src="' not in html and 'href="http' not in html
    results = json.loads((out / "results.json").read_text())
    with headless_chromium() as driver:
        driver.get(report.as_uri())
        wait_until(
            lambda: driver.find_element("tag name", "body").get_attribute("data-loaded"),
            30, "the report to render",
        )  # fmt: skip
        _check_views(driver, len(results["history"]), 2)
        assert driver.find_element("id", "phase").text == "finished"
        save_artifact(driver, tmp_path, "simulate_report.png")
        urls = requested_urls(driver)
        errors = console_errors(driver)
        assert not driver.find_element("id", "epsilon").is_displayed()  # no privacy: no ε
        # a run with differential privacy records ε per round (history[].epsilon): shown
        for i, rec in enumerate(results["history"]):
            rec["epsilon"] = {s: 0.5 * (i + 1) + 0.1 * j for j, s in enumerate(SCENARIOS)}
        private = tmp_path / "private.html"
        write_static_report(results, private)
        driver.get(private.as_uri())
        wait_until(lambda: driver.find_element("id", "epsilon").is_displayed(), 30, "ε badge")
        last = results["history"][-1]["epsilon"]
        assert driver.find_element("id", "epsilon").text == f"ε spent {max(last.values()):.3f}"
        head = driver.find_element("css selector", "#rounds-table thead").text
        assert "ε" in head
        errors += console_errors(driver)
    assert [u for u in urls if not u.startswith(("file:", "data:"))] == []
    assert errors == []
