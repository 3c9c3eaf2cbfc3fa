"""Hostile input over HTTP: schemathesis against the gateway's and the status API's OpenAPI.

Both servers run for real on 127.0.0.1 (uvicorn in a thread of this process): the gateway
over a registry with two published scenarios, the status API of an aggregator whose
federation has completed two rounds (so every path has content). For every operation of
each schema, schemathesis generates schema-conforming and schema-violating requests
(``positive`` and ``negative`` modes) and we require:

* zero 5xx responses (both servers are fully ready, so no 503 is legitimate either);
* the status API's responses conform to the schema it publishes;
* no response carries a traceback, a bearer token, or a file path outside the server's
  roots (the gateway may name paths inside its registry, nothing else).

The gateway reads its body itself (for speed) so FastAPI's schema has no request body for
``predict``; the test adds the real one (every feature of the schema, ``instances`` 1..N)
so that the fuzzer generates bodies at all. Example counts: ``faults-ci`` / ``faults-full``.
"""

from __future__ import annotations

import copy
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import schemathesis
from gateway_support import running_gateway, trained_like_model
from helpers.faults import FULL
from helpers.processes import free_port, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.openapi import from_dict

from aggregator.server import Aggregator
from aggregator.settings import AggregatorSettings
from msmtrec.codec import encode
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.registry import ModelRegistry
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import make_tokens

EXAMPLES = 400 if FULL else 40  # per operation and generation mode
SCENARIOS = ("NL", "ES")


def _fuzz_settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not FULL,
        suppress_health_check=list(HealthCheck),
        database=None,
    )


def leaks(text: str, secrets: list[str], allowed_roots: list[str]) -> list[str]:
    """What in a response body must never be there."""
    found = [s[:8] + "…" for s in secrets if s and s in text]
    if "Traceback" in text or 'File "/' in text:
        found.append("traceback")
    for marker in ("/work/", "/home/", "/root/", "/tmp/", "/usr/", "/etc/", "site-packages"):
        at = text.find(marker)
        while at >= 0:
            if not any(text.startswith(root, at) for root in allowed_roots):
                found.append(f"path {text[at : at + 60]!r}")
                break
            at = text.find(marker, at + 1)
    return found


def _fuzz(
    schema_doc: dict,
    base_url: str,
    secrets: list[str],
    roots: list[str],
    conformance: bool,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Run every operation × mode; returns the number of requests made."""
    schema = from_dict(schema_doc)
    checks = [schemathesis.checks.not_a_server_error]
    if conformance:
        checks.append(schemathesis.checks.response_schema_conformance)
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            kwargs = (overrides or {}).get(operation.label, {})
            try:
                strategy = operation.as_strategy(generation_mode=mode, **kwargs)
            except Exception as exc:  # an operation with nothing to negate, e.g. no inputs
                if mode is GenerationMode.NEGATIVE:
                    continue
                raise AssertionError(f"{operation.label}: {exc}") from exc

            @_fuzz_settings()
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                response = case.call(base_url=base_url, timeout=30)
                calls += 1
                case.validate_response(response, checks=checks)
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                found = leaks(response.text, secrets, roots)
                assert not found, (case.as_curl_command(), found, response.text[:500])

            try:
                run()
            except Unsatisfiable:
                # nothing to violate (an operation without inputs has no negative cases)
                assert mode is GenerationMode.NEGATIVE, operation.label
    return calls


# ------------------------------------------------------------------------------ gateway
@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    for i, s in enumerate(SCENARIOS):
        registry.publish(s, trained_like_model(seed=70 + i), round=1)
    with running_gateway(root, poll_interval=0.5) as base:
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 30, "gateway ready")
        yield base, root


def test_gateway_openapi_fuzzing_gives_no_5xx_and_leaks_nothing(gateway):
    base, root = gateway
    doc = httpx.get(f"{base}/openapi.json").json()
    doc = copy.deepcopy(doc)
    predict = doc["paths"]["/v1/scenarios/{scenario}/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]  # the app documents it
    assert set(body["properties"]["instances"]["items"]["required"]) == set(
        ALIEXPRESS.feature_columns
    )
    body["properties"]["instances"]["maxItems"] = 8  # keep generated bodies small
    label = "POST /v1/scenarios/{scenario}/predict"
    calls = _fuzz(doc, base, [], [str(root)], conformance=False)
    # and the same with the scenario fixed to a served one, so bodies reach the model
    calls += _fuzz(
        {**doc, "paths": {"/v1/scenarios/{scenario}/predict": doc["paths"][label.split()[1]]}},
        base, [], [str(root)], conformance=False,
        overrides={label: {"path_parameters": {"scenario": "NL"}}},
    )  # fmt: skip
    assert calls >= EXAMPLES  # the parameterless GETs exhaust their few cases early
    metrics = httpx.get(f"{base}/metrics").text
    assert not re.search(r'errors_total\{reason="internal",scenario="[^"]*"\} (?!0\.0)', metrics)
    served = re.findall(r'msmtrec_gateway_instances_total\{scenario="NL"\} ([0-9.]+)', metrics)
    assert served and float(served[0]) > 0, "no fuzzed body reached the model"


@given(body=st.one_of(st.binary(max_size=4096), st.text(max_size=4096).map(str.encode)))
@_fuzz_settings()
def test_gateway_predict_with_arbitrary_bytes(gateway, body):
    """Not even JSON: random bytes as the body of a served scenario are a 4xx, never 5xx."""
    base, root = gateway
    r = httpx.post(f"{base}/v1/scenarios/NL/predict", content=body, timeout=30)
    assert 400 <= r.status_code < 500, (body[:100], r.status_code, r.text[:300])
    assert not leaks(r.text, [], [str(root)])


# --------------------------------------------------------------------------- status API
@pytest.fixture(scope="module")
def status_api(tmp_path_factory) -> Iterator[tuple[str, list[str], Path]]:
    """An aggregator whose status API serves a federation with two completed rounds."""
    root = tmp_path_factory.mktemp("status")
    paths = make_tokens(["A", "B"], root / "tokens")
    tokens = {s: paths[s].read_text().strip() for s in ("A", "B")}
    cfg = AggregatorSettings(
        tokens_file=paths["tokens"], port=free_port(), status_port=free_port(),
        state_dir=root / "aggregator", rounds=3, min_clients=2, start_wait_seconds=0,
        threads=1, heartbeat_interval_seconds=60,
    )  # fmt: skip
    agg = Aggregator(cfg).start()
    fed = agg.federation
    names = [s.name for s in fed.signature]
    with grpc.insecure_channel(f"127.0.0.1:{cfg.port}") as channel:
        stub = pb_grpc.FederationStub(channel)
        md = {s: (("authorization", f"Bearer {t}"),) for s, t in tokens.items()}
        for s in tokens:
            stub.Join(pb.JoinRequest(scenario=s, spec_digest=fed.spec_digest,
                                     signature=wire.specs_to_proto(fed.signature)),
                      metadata=md[s], timeout=10)  # fmt: skip
        for r in (1, 2):
            wait_until(lambda r=r: fed.status().phase.value == "open"
                       and fed.status().round == r, 30, f"round {r}")  # fmt: skip
            for i, s in enumerate(tokens):
                params = {n: t + 0.01 * (i + 1) for n, t in fed.strategy.payload(s).items()}
                enc = encode(params, names)
                stub.Submit(wire.submit_stream(enc, 1 << 20, scenario=s, round_number=r,
                                               num_samples=100, metrics={"train_loss": 0.4}),
                            metadata=md[s], timeout=30)  # fmt: skip
        wait_until(lambda: fed.status().completed_rounds == 2, 30, "two completed rounds")
        stub.ReportMetrics(
            pb.ReportMetricsRequest(
                scenario="A", round=2,
                splits=wire.split_metrics_to_proto(
                    {"valid": {"ctr": {"auc": 0.7, "logloss": 0.4, "n": 10, "positives": 3}}}),
                timings={"eval_seconds": 0.1},
            ),
            metadata=md["A"], timeout=10,
        )  # fmt: skip
    base = f"http://127.0.0.1:{cfg.status_port}"
    try:
        yield base, list(tokens.values()), root
    finally:
        agg.stop(0)


def test_status_api_openapi_fuzzing_gives_no_5xx_conforms_and_leaks_nothing(status_api):
    base, tokens, _root = status_api
    doc = httpx.get(f"{base}/openapi.json").json()
    # The status API has no business naming any file: no allowed roots at all.
    calls = _fuzz(doc, base, tokens, [], conformance=True)
    assert calls >= EXAMPLES  # the parameterless GETs exhaust their few cases early
    for path in ("/v1/status", "/v1/rounds", "/v1/rounds/2", "/v1/clients", "/metrics"):
        r = httpx.get(base + path)
        assert r.status_code == 200 and not leaks(r.text, tokens, []), (path, r.text[:300])


# ------------------------------------------------------------------- slow clients
def test_slow_and_half_open_connections_do_not_stall_the_gateway(gateway):
    """Clients that open connections and send half a request (slowloris-style) do not keep
    the gateway from answering others promptly."""
    base, _ = gateway
    host, port = base.removeprefix("http://").split(":")
    socks = []
    for _ in range(50):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(
            b"POST /v1/scenarios/NL/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n"
        )
        socks.append(s)
    try:
        start = time.monotonic()
        r = httpx.get(f"{base}/v1/scenarios", timeout=10)
        assert r.status_code == 200 and time.monotonic() - start < 5.0
    finally:
        for s in socks:
            s.close()
