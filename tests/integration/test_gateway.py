"""Gateway over real HTTP (uvicorn on 127.0.0.1): predictions, errors, status endpoints."""

from __future__ import annotations

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
)

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.registry import ModelRegistry

MAX_BATCH = 150


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """NL (direct CTCVR head) and ES (ESMM head) behind one running gateway."""
    root = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(root)
    models = {
        "NL": trained_like_model(seed=1),
        "ES": trained_like_model(seed=2, ctcvr_head="esmm"),
    }
    versions = {
        s: reg.publish(s, m, round=3, metrics={"valid": {"ctr": {"auc": 0.7}}})
        for s, m in models.items()
    }
    with running_gateway(root, max_batch=MAX_BATCH) as base, httpx.Client(base_url=base) as c:
        wait_ready(c)
        yield c, models, versions


def _predict(client: httpx.Client, scenario: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(f"/v1/scenarios/{scenario}/predict", content=content)


@pytest.mark.parametrize("scenario", ["NL", "ES"])
def test_predictions_equal_the_models_own_forward(served, scenario):
    client, models, versions = served
    instances = fixture_instances("train") + fixture_instances("test")
    resp = _predict(client, scenario, {"instances": instances})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["scenario"] == scenario and body["model_version"] == versions[scenario]
    want = eager_probs(models[scenario], instances)
    for t, task in enumerate(ALIEXPRESS.tasks):
        got = torch.tensor(body["predictions"][task], dtype=torch.float64)
        assert len(got) == len(instances)
        assert (got - want[:, t].double()).abs().max().item() <= 1e-6, task


@pytest.mark.parametrize("scenario", ["NL", "ES"])
def test_real_rows_get_probabilities_strictly_between_0_and_1(served, scenario):
    client, _, _ = served
    for split in ("train", "test"):
        for inst in fixture_instances(split)[:20]:  # one instance per request as well
            resp = _predict(client, scenario, {"instances": [inst]})
            assert resp.status_code == 200, resp.text
            pred = resp.json()["predictions"]
            assert 0.0 < pred["ctr"][0] < 1.0 and 0.0 < pred["ctcvr"][0] < 1.0
            if scenario == "ES":  # ESMM: CTCVR = CTR · CVR never exceeds CTR
                assert pred["ctcvr"][0] <= pred["ctr"][0]


def _row(**changes):
    inst = dict(fixture_instances("test")[0])
    inst.update(changes)
    return inst


def _without(name):
    inst = _row()
    del inst[name]
    return inst


ERROR_CASES = [
    (
        {"instances": [_row(), _without("categorical_5")]},
        "instances[1]: missing feature categorical_5",
    ),
    (
        {"instances": [_row(numerical_12="abc")]},
        'instances[0].numerical_12: expected a number, got "abc"',
    ),
    (
        {"instances": [_row(), _row(), _row(), _row(numerical_12="0.5")]},
        'instances[3].numerical_12: expected a number, got "0.5"',
    ),
    (
        {"instances": [_row(numerical_1=None)]},
        "instances[0].numerical_1: expected a number, got null",
    ),
    (
        {"instances": [_row(categorical_2=True)]},
        "instances[0].categorical_2: expected an integer id, got true",
    ),
    (
        {"instances": [_row(categorical_3=1.5)]},
        "instances[0].categorical_3: expected an integer id, got 1.5",
    ),
    (
        {"instances": [_row(categorical_4=-1)]},
        "instances[0].categorical_4: negative categorical id -1",
    ),
    (
        {"instances": [_row(numerical_2=1e39)]},
        "instances[0].numerical_2: value 1e+39 is not finite in float32",
    ),
    (
        {"instances": [_row()] * (MAX_BATCH + 1)},
        f"instances: batch of {MAX_BATCH + 1} instances exceeds the limit of {MAX_BATCH}",
    ),
    ({"instances": []}, "instances: expected at least 1 instance"),
    ({"instances": {"a": 1}}, "instances: expected a list, got dict"),
    ({"instances": [[1, 2, 3]]}, "instances[0]: expected an object, got list"),
    ({"rows": []}, "instances: field required"),
    ([1, 2], 'body: expected a JSON object {"instances": [...]}'),
    (b'{"instances": [', "body: invalid JSON"),
]


@pytest.mark.parametrize(("body", "message"), ERROR_CASES)
def test_bad_input_is_a_422_naming_field_and_instance(served, body, message):
    client, _, _ = served
    resp = _predict(client, "NL", body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.json()
    assert problem["detail"].startswith(message), problem["detail"]
    assert problem["field"] == message.split(":")[0]
    assert problem["type"] == "urn:msmtrec:problem:invalid-request" and problem["status"] == 422


def test_oversized_body_is_refused_before_parsing(served):
    client, _, _ = served
    resp = _predict(client, "NL", b"[" + b" " * (5 << 20) + b"]")
    assert resp.status_code == 413
    assert "body: larger than" in resp.json()["detail"]


def test_unknown_categorical_ids_use_the_oov_slot_and_are_counted(served):
    client, models, _ = served
    before = _metric(client, 'msmtrec_gateway_oov_ids_total{field="categorical_7",scenario="NL"}')
    inst = _row(categorical_7=999, categorical_1=11)  # 999 ≥ 50, 11 == vocab size 11
    resp = _predict(client, "NL", {"instances": [inst, inst]})
    assert resp.status_code == 200
    want = eager_probs(models["NL"], [inst])  # eager_probs clamps to the OOV slot too
    assert abs(resp.json()["predictions"]["ctr"][0] - want[0, 0].item()) <= 1e-6
    after = _metric(client, 'msmtrec_gateway_oov_ids_total{field="categorical_7",scenario="NL"}')
    assert after - before == 2
    assert (
        _metric(client, 'msmtrec_gateway_oov_ids_total{field="categorical_1",scenario="NL"}') >= 2
    )


@pytest.mark.parametrize("name", ["XX", "nl", "NL.v2", "N" * 65])
def test_unknown_scenario_is_a_404_listing_the_known_ones(served, name):
    client, _, _ = served
    resp = _predict(client, name, {"instances": [_row()]})
    assert resp.status_code == 404
    assert resp.json()["known"] == ["ES", "NL"]
    assert "unknown scenario" in resp.json()["detail"]


def test_paths_that_try_to_leave_the_scenario_are_404(served):
    client, _, _ = served
    for path in ("/v1/scenarios/NL%2F..%2FES/predict", "/v1/scenarios/../ES/predict"):
        assert client.post(path, content=b'{"instances": []}').status_code == 404


def test_scenarios_lists_version_round_and_metrics(served):
    client, _, versions = served
    resp = client.get("/v1/scenarios")
    assert resp.status_code == 200
    listed = {e["scenario"]: e for e in resp.json()["scenarios"]}
    assert set(listed) == {"NL", "ES"}
    for s, entry in listed.items():
        assert entry["loaded"] and entry["version"] == versions[s] and entry["round"] == 3
        assert entry["metrics"] == {"valid": {"ctr": {"auc": 0.7}}}
        assert entry["preset"] == "small" and entry["tasks"] == ["ctr", "ctcvr"]


def test_health_readiness_and_metrics_endpoints(served):
    client, _, versions = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["scenarios"] == versions
    _predict(client, "ES", {"instances": [_row()] * 7})
    _predict(client, "ES", {"instances": [_row(categorical_1="x")]})
    text = client.get("/metrics").text
    assert 'msmtrec_gateway_request_seconds_bucket{le="0.001",scenario="ES",status="200"}' in text
    assert _metric(client, 'msmtrec_gateway_request_seconds_count{scenario="ES",status="422"}') >= 1
    assert _metric(client, 'msmtrec_gateway_batch_size_bucket{le="10.0",scenario="ES"}') >= 1
    assert _metric(client, 'msmtrec_gateway_errors_total{reason="validation",scenario="ES"}') >= 1
    assert (
        _metric(
            client, 'msmtrec_gateway_errors_total{reason="unknown_scenario",scenario="unknown"}'
        )
        >= 0
    )
    for s, v in versions.items():
        assert _metric(client, f'msmtrec_gateway_model_info{{scenario="{s}",version="{v}"}}') == 1
        assert _metric(client, f'msmtrec_gateway_model_round{{scenario="{s}"}}') == 3


def _metric(client: httpx.Client, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
