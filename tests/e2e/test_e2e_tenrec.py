"""End to end on the paper's second dataset (issue #12): Tenrec-layout raw rows →
``msmtrec data prepare-tenrec`` → ``msmtrec simulate --spec tenrec`` → a network federation
of two scenarios (``msmtrec up --spec tenrec --data``) → the gateway answering a request
keyed by the spec's feature names (``user_id``, ``item_id``, …) with predictions keyed by
its task names (``click``, ``like``).

The raw files are written by this test in the release's column layout (not by the
project's generator), so a preparer that misreads a column fails here. Their labels carry a
learnable signal (an item effect), so the AUC check can fail on a model that learns nothing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers.processes import REPO, wait_until
from test_e2e_up import FREE_PORTS, START, UpProcess, assert_nothing_left

RAW_COLUMNS = (
    "user_id", "item_id", "click", "follow", "like", "share", "video_category",
    "watching_times", "gender", "age",
)  # fmt: skip
FILES = ("QK-video", "QB-video")


def write_raw_tenrec(raw: Path, rows: int = 6000, seed: int = 0) -> None:
    """Raw Tenrec video files: power-law item popularity, millions-wide user ids, click
    driven by an item effect and the category, like only after a click."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    items = 400
    item_effect = rng.normal(0.0, 1.5, items)
    for k, name in enumerate(FILES):
        item = np.minimum(rng.zipf(1.3, rows) - 1, items - 1)
        category = rng.integers(0, 30, rows)
        logit = -1.0 + item_effect[item] + 0.05 * category + 0.3 * k
        click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
        like = click * (rng.random(rows) < 1 / (1 + np.exp(-(item_effect[item] - 1.0))))
        frame = pd.DataFrame(
            {
                "user_id": rng.integers(0, 5_000_000, rows),
                "item_id": item * 7919 + 13,  # raw ids are not dense
                "click": click,
                "follow": np.zeros(rows, int),
                "like": like.astype(int),
                "share": np.zeros(rows, int),
                "video_category": category,
                "watching_times": click * rng.integers(0, 5, rows),
                "gender": rng.integers(0, 3, rows),
                "age": rng.integers(0, 8, rows),
            },
            columns=list(RAW_COLUMNS),
        )
        frame.to_csv(raw / f"{name}.csv", index=False)


@pytest.fixture
def up_run(tmp_path):
    started: list[UpProcess] = []

    def _launch(name: str, *args: str) -> UpProcess:
        started.append(UpProcess(tmp_path / name, *args))
        return started[-1]

    yield _launch
    for up in started:
        up.close()


def msmtrec(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "msmtrec_app.cli", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"msmtrec {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(600)
def test_tenrec_from_raw_files_to_gateway_predictions(tmp_path, up_run):
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_raw_tenrec(raw)
    msmtrec("data", "prepare-tenrec", "--raw", str(raw), "--out", str(data))
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == sorted(FILES)
    for name in FILES:
        train = pd.read_parquet(data / name / "train.parquet")
        assert {"user_id", "item_id", "click", "like"} <= set(train.columns)
        assert (train["like"] <= train["click"]).all()

    # --- research path: simulate reports per-scenario click / like AUCs
    out = tmp_path / "sim"
    msmtrec("simulate", "--data", str(data), "--spec", "tenrec", "--rounds", "2",
            "--seed", "1", "--threads", "2", "--out", str(out))  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    for name in FILES:
        assert name in md
    aucs = _test_aucs(results)
    assert set(aucs) == set(FILES), results
    for name, by_task in aucs.items():
        assert set(by_task) == {"click", "like"}, by_task
        assert by_task["click"] > 0.6, (name, by_task)  # the item effect is learnable

    # --- network path: aggregator, one client per scenario, gateway
    # the clients stream their train splits (out-of-core path) through a small buffer
    up = up_run("up", "--data", str(data), "--spec", "tenrec", "--rounds", "2",
                "--stream-buffer-rows", "1024",
                *FREE_PORTS, "--startup-timeout", "240")  # fmt: skip
    wait_until(lambda: up.phase() == "serving", START + 120, "msmtrec up to serve", 0.5,
               up.diagnostics)  # fmt: skip
    state = up.state()
    status_url, gateway_url = state["urls"]["status"], state["urls"]["gateway"]
    rounds = httpx.get(f"{status_url}/v1/rounds", timeout=5).json()
    assert [r["round"] for r in rounds] == [1, 2]
    for name in FILES:
        assert set(rounds[-1]["clients"][name]["eval"]["test"]) == {"click", "like"}
        log = (up.run_dir / "logs" / f"client-{name}.log").read_text()
        assert "streaming the train split from Parquet (shuffle buffer 1024 rows)" in log

    test = pd.read_parquet(data / "QK-video" / "test.parquet").head(4)
    instances = [
        {c: int(row[c]) for c in ("user_id", "item_id", "video_category", "gender", "age")}
        for _, row in test.iterrows()
    ]
    instances[0]["user_id"] = 4_999_999_999  # an id never seen: hashed, not refused
    for name in FILES:
        response = httpx.post(f"{gateway_url}/v1/scenarios/{name}/predict",
                              json={"instances": instances}, timeout=20)  # fmt: skip
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert set(predictions) == {"click", "like"}
        for click, like in zip(predictions["click"], predictions["like"], strict=True):
            assert 0.0 < like <= click < 1.0  # like = click × like-given-click
    missing = [{k: v for k, v in instances[0].items() if k != "item_id"}]
    bad = httpx.post(f"{gateway_url}/v1/scenarios/QK-video/predict",
                     json={"instances": missing}, timeout=20)  # fmt: skip
    assert bad.status_code == 422 and "item_id" in bad.text

    children = state["children"]
    up.proc.send_signal(signal.SIGINT)
    assert up.wait(60) == 0, up.diagnostics()
    assert_nothing_left(up, children)


def _test_aucs(results: dict) -> dict[str, dict[str, float]]:
    """{scenario: {task: test AUC}} from simulate's results.json, whatever its nesting."""
    found: dict[str, dict[str, float]] = {}

    def walk(node, scenario=None):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in FILES:
                    walk(value, key)
                elif key == "test" and scenario and isinstance(value, dict):
                    for task, metric in value.items():
                        auc = metric.get("auc") if isinstance(metric, dict) else None
                        if isinstance(auc, float):
                            found.setdefault(scenario, {})[task] = auc
                else:
                    walk(value, scenario)
        elif isinstance(node, list):
            for item in node:
                walk(item, scenario)

    walk(results)
    return found
