"""Every 4xx/5xx of the gateway and the status API is an RFC 9457 problem.

Real services on 127.0.0.1: each error the services produce themselves (a bad field, a body
or head too large, an unknown scenario, a scenario without a model, not ready, a round that
has not completed) and each the framework produces (unknown route, wrong method, a path
parameter that does not parse) answers ``application/problem+json`` with type, title,
status and detail, the type being a row of the one table (servicekit.problems), which
docs/GATEWAY.md documents row by row.
"""

from __future__ import annotations

import re

import httpx
import pytest
from gateway_support import running_gateway, trained_like_model, wait_until
from helpers.processes import REPO
from helpers.status_api import running_status_api

from msmtrec.registry import WEIGHTS_FILE, ModelRegistry
from servicekit.problems import PROBLEM_JSON, PROBLEM_TYPES, TYPE_PREFIX


def assert_problem(resp: httpx.Response, status: int, slug: str | None, field=None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM_JSON
    body = resp.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status and body["detail"]
    if slug is None:
        assert body["type"] == "about:blank"
    else:
        kind = PROBLEM_TYPES[slug]
        assert (body["type"], body["title"], kind.status) == (kind.uri, kind.title, status)
    if field is not None:
        assert body["field"] == field, body
    return body


def test_gateway_errors_are_problems(tmp_path):
    registry = ModelRegistry(tmp_path / "reg")
    registry.publish("NL", trained_like_model(seed=5), round=1)
    broken = registry.publish("US", trained_like_model(seed=6), round=1)
    (tmp_path / "reg" / "US" / broken / WEIGHTS_FILE).write_bytes(b"garbage")  # never loads
    with (
        running_gateway(tmp_path / "reg", max_body_bytes=1024) as base,
        httpx.Client(base_url=base, timeout=20) as c,
    ):
        wait_until(lambda: "US" in c.get("/readyz").json().get("waiting_for", {}))
        assert_problem(c.post("/v1/scenarios/NL/predict", content=b"{"), 422, "invalid-request",
                       field="body")  # fmt: skip
        big = b'{"instances": [' + b" " * 2048 + b"]}"
        assert_problem(c.post("/v1/scenarios/NL/predict", content=big), 413, "body-too-large",
                       field="body")  # fmt: skip
        body = assert_problem(c.post("/v1/scenarios/XX/predict", json={"instances": [{}]}), 404,
                              "unknown-scenario", field="scenario")  # fmt: skip
        assert body["known"] == ["NL"]  # the loaded ones
        assert_problem(c.get("/nothing-here"), 404, "not-found")
        assert_problem(c.get("/v1/scenarios/NL/predict"), 405, "method-not-allowed")
        head = c.get("/healthz", headers={"x-filler": "a" * (70 << 10)})
        assert_problem(head, 431, "head-too-large")
        resp = c.post("/v1/scenarios/US/predict", json={"instances": [{}]})
        assert_problem(resp, 503, "model-not-loaded", field="scenario")
        assert resp.headers["retry-after"] == "1"
        ready = assert_problem(c.get("/readyz"), 503, "not-ready")
        assert "US" in ready["waiting_for"]


def test_status_api_errors_are_problems(tmp_path):
    with running_status_api(tmp_path) as base, httpx.Client(base_url=base, timeout=20) as c:
        assert_problem(c.get("/v1/rounds/3"), 404, "not-found", field="n")
        bad = assert_problem(c.get("/v1/rounds/three"), 422, "invalid-request", field="n")
        assert bad["errors"][0]["field"] == "n"
        assert_problem(c.get("/nothing-here"), 404, "not-found")
        assert_problem(c.post("/v1/status"), 405, "method-not-allowed")
        doc = c.get("/openapi.json").json()
        assert "Problem" in doc["components"]["schemas"]
        for path, ops in doc["paths"].items():
            for op in ops.values():
                for code, resp in op["responses"].items():
                    if code[0] in "45":
                        assert list(resp["content"]) == [PROBLEM_JSON], (path, code)


def test_every_problem_type_is_documented():
    text = (REPO / "docs" / "GATEWAY.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (\d{3}) \|", text, re.MULTILINE))
    assert rows == {slug: str(p.status) for slug, p in PROBLEM_TYPES.items()}
    assert TYPE_PREFIX in text


@pytest.mark.parametrize("slug", sorted(PROBLEM_TYPES))
def test_problem_table_rows_are_complete(slug):
    kind = PROBLEM_TYPES[slug]
    assert 400 <= kind.status < 600 and kind.title and kind.uri == TYPE_PREFIX + slug
