"""Hot reload and readiness: swaps under load lose no request, broken versions are refused."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time

import httpx
import orjson
import pytest
import torch
from gateway_support import (
    eager_probs,
    fixture_instances,
    running_gateway,
    trained_like_model,
    wait_ready,
    wait_until,
)

from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.model import build_model, preset
from msmtrec.registry import LATEST_FILE, METADATA_FILE, WEIGHTS_FILE, ModelRegistry

INSTANCES = fixture_instances("test")[:5]
BODY = orjson.dumps({"instances": INSTANCES})


def _served_version(client: httpx.Client, scenario: str) -> str | None:
    entry = {e["scenario"]: e for e in client.get("/v1/scenarios").json()["scenarios"]}
    return entry.get(scenario, {}).get("version")


def _place_version(root, scenario: str, source_root, version: str) -> None:
    """Put a (possibly broken) version dir into the registry, then move the pointer atomically
    — what a publisher does, but with content we control."""
    shutil.copytree(source_root / scenario / version, root / scenario / version)
    tmp = root / scenario / ".tmp-LATEST-test"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / scenario / LATEST_FILE)


def test_reload_under_concurrent_requests_loses_none(tmp_path):
    """4 threads send requests while a new version is published after the first 100
    responses: every request succeeds, every thread sees the switch to the new version, and
    each response's numbers belong to the version it names (a swap never mixes models within
    a request). Each thread sends at least 200 requests and at most 2000 (or 60 s)."""
    old, new = trained_like_model(seed=21), trained_like_model(seed=22)
    expected = {}
    reg = ModelRegistry(tmp_path)
    v1 = reg.publish("NL", old, round=1)
    expected[v1] = eager_probs(old, INSTANCES)
    new_version: list[str] = []  # set once v2 is published
    per_thread: list[list[tuple[int, str | None, list[float] | None]]] = []
    lock = threading.Lock()
    answered = threading.Semaphore(0)

    with running_gateway(tmp_path, poll_interval=0.05) as base:
        with httpx.Client(base_url=base) as c:
            wait_ready(c)

        def worker() -> None:
            local: list[tuple[int, str | None, list[float] | None]] = []
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=base, timeout=10) as client:
                while len(local) < 2000 and time.monotonic() < deadline:
                    try:
                        r = client.post("/v1/scenarios/NL/predict", content=BODY)
                        data = r.json() if r.status_code == 200 else {}
                        local.append(
                            (r.status_code, data.get("model_version"),
                             data.get("predictions", {}).get("ctr"))
                        )  # fmt: skip
                    except httpx.HTTPError as exc:
                        local.append((-1, repr(exc), None))
                    answered.release()
                    if len(local) >= 200 and new_version and local[-1][1] == new_version[0]:
                        break
            with lock:
                per_thread.append(local)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for _ in range(100):  # the load runs on the old version first
            assert answered.acquire(timeout=30)
        v2 = reg.publish("NL", new, round=2)
        expected[v2] = eager_probs(new, INSTANCES)
        new_version.append(v2)
        for t in threads:
            t.join(120)
        with httpx.Client(base_url=base) as c:
            final = c.post("/v1/scenarios/NL/predict", content=BODY).json()

    results = [r for local in per_thread for r in local]
    assert len(per_thread) == 4 and all(len(local) >= 200 for local in per_thread)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert {v for _, v, _ in results} == {v1, v2}
    assert final["model_version"] == v2
    for _, version, ctr in [*results, (200, final["model_version"], final["predictions"]["ctr"])]:
        got = torch.tensor(ctr, dtype=torch.float64)
        assert (got - expected[version][:, 0].double()).abs().max() <= 1e-6
    for local in per_thread:  # every client saw the switch, and once v2 answered, never v1
        versions = [v for _, v, _ in local]
        assert versions[-1] == v2
        assert v1 not in versions[versions.index(v2) :]
    assert expected[v1][:, 0].sub(expected[v2][:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("breakage", ["corrupt_weights", "wrong_schema", "bad_metadata"])
def test_broken_version_is_refused_and_the_old_one_keeps_serving(tmp_path, caplog, breakage):
    reg = ModelRegistry(tmp_path)
    v1 = reg.publish("NL", trained_like_model(seed=31), round=1)
    staging = tmp_path / "staging"
    sreg = ModelRegistry(staging)
    if breakage == "wrong_schema":
        other = FeatureSchema(
            categorical=ALIEXPRESS.categorical,
            vocab_sizes=(20, *ALIEXPRESS.vocab_sizes[1:]),
            numerical=ALIEXPRESS.numerical,
        )
        sreg.publish("NL", build_model(other, preset("small"), 0).eval(), round=1)
        bad = sreg.publish("NL", build_model(other, preset("small"), 0).eval(), round=2)
    else:
        sreg.publish("NL", trained_like_model(seed=32), round=1)  # so the bad one is v000002
        bad = sreg.publish("NL", trained_like_model(seed=32), round=2)
    vdir = staging / "NL" / bad
    if breakage == "corrupt_weights":
        (vdir / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    elif breakage == "bad_metadata":
        (vdir / METADATA_FILE).write_text("{ truncated")
    renamed = bad
    caplog.set_level(logging.ERROR, logger="msmtrec.gateway")
    with running_gateway(tmp_path, poll_interval=0.05) as base, httpx.Client(base_url=base) as c:
        wait_ready(c)
        assert _served_version(c, "NL") == v1
        _place_version(tmp_path, "NL", staging, renamed)
        wait_until(lambda: any(e.get("last_refused") for e in c.get("/v1/scenarios").json()
                               ["scenarios"]))  # fmt: skip
        entry = c.get("/v1/scenarios").json()["scenarios"][0]
        assert entry["version"] == v1
        assert entry["last_refused"]["version"] == renamed
        reason = {
            "corrupt_weights": "sha256",
            "wrong_schema": "feature schema differs",
            "bad_metadata": "unreadable metadata",
        }[breakage]
        assert reason in entry["last_refused"]["reason"]
        r = c.post("/v1/scenarios/NL/predict", content=BODY)
        assert r.status_code == 200 and r.json()["model_version"] == v1
        assert c.get("/readyz").status_code == 200
        assert (
            'msmtrec_gateway_reloads_total{outcome="failure",scenario="NL"} 1.0'
            in c.get("/metrics").text
        )
        # A good version published afterwards is picked up.
        v3 = reg.publish("NL", trained_like_model(seed=33), round=3)
        wait_until(lambda: _served_version(c, "NL") == v3)
    refused = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.msg]
    assert (
        refused
        and renamed in refused[0].getMessage()
        and "still serving" in (refused[0].getMessage())
    )


def test_not_ready_until_every_scenario_is_loaded(tmp_path):
    reg = ModelRegistry(tmp_path)
    with running_gateway(tmp_path, poll_interval=0.05) as base, httpx.Client(base_url=base) as c:
        # Empty registry: alive but not ready.
        wait_until(lambda: "no published scenario" in json.dumps(c.get("/readyz").json()))
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        reg.publish("NL", trained_like_model(seed=41), round=1)
        wait_ready(c)
        # A scenario whose only version is broken keeps the gateway not ready, names the
        # reason, answers 503 for that scenario and keeps serving the others.
        staging = tmp_path.parent / (tmp_path.name + "-staging")
        bad = ModelRegistry(staging).publish("US", trained_like_model(seed=42), round=1)
        (staging / "US" / bad / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
        (tmp_path / "US").mkdir()
        _place_version(tmp_path, "US", staging, bad)
        wait_until(lambda: "US" in c.get("/readyz").json().get("waiting_for", {}))
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "sha256" in ready.json()["waiting_for"]["US"]
        resp = c.post("/v1/scenarios/US/predict", content=BODY)
        assert resp.status_code == 503 and "no loaded model" in resp.json()["detail"]
        assert c.post("/v1/scenarios/NL/predict", content=BODY).status_code == 200
        reg.publish("US", trained_like_model(seed=43), round=2)
        wait_ready(c)


def test_restart_serves_the_newest_good_version_when_latest_is_broken(tmp_path):
    reg = ModelRegistry(tmp_path)
    good = reg.publish("NL", trained_like_model(seed=51), round=1)
    broken = reg.publish("NL", trained_like_model(seed=52), round=2)
    (tmp_path / "NL" / broken / WEIGHTS_FILE).write_bytes(b"garbage")
    with running_gateway(tmp_path) as base, httpx.Client(base_url=base) as c:
        wait_ready(c)
        entry = c.get("/v1/scenarios").json()["scenarios"][0]
        assert entry["version"] == good and entry["last_refused"]["version"] == broken
