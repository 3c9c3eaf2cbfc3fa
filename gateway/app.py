"""The prediction service: FastAPI over a :class:`~gateway.store.ModelStore`.

Serving path of ``POST /v1/scenarios/{scenario}/predict`` (everything else was prepared when
the version was loaded): read the body (bounded), ``orjson`` decode, one lookup of the
scenario's current model, :meth:`FeaturePlan.parse` into numpy arrays, one forward of the
compiled model under ``torch.inference_mode()``, ``orjson`` encode. Parse + forward run in a
small dedicated thread pool (``workers``), not on the event loop and not in Starlette's
40-thread pool: on two cores, two inference threads keep both busy without piling up
contending forwards (see docs/GATEWAY.md for the measurements behind the default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.features import InstanceError
from gateway.metrics import UNKNOWN, GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.store import ModelStore, ServingModel
from gateway.watcher import RegistryWatcher
from msmtrec.data.schema import FeatureSchema
from msmtrec.registry import ModelRegistry
from servicekit.api_docs import add_offline_docs
from servicekit.problems import (
    PROBLEM_JSON,
    install_problem_handlers,
    problem_body,
    problem_response,
)
from servicekit.ratelimit import TokenBuckets

log = logging.getLogger("msmtrec.gateway")
JSON = "application/json"


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def _problem(slug: str, detail: str, **extra: Any) -> bytes:
    """An RFC 9457 problem body (servicekit.problems), encoded on the hot path."""
    return orjson.dumps(problem_body(slug, detail, **extra))


class Predictor:
    """Parse + forward for one request against one already-chosen model (thread-safe)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.max_batch = settings.max_batch

    def __call__(self, model: ServingModel, raw: bytes) -> tuple[int, bytes]:
        start = time.perf_counter()
        try:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InstanceError("body", f"invalid JSON: {exc}") from None
            batch = model.plan.parse(body, self.max_batch)
        except InstanceError as exc:
            model.validation_errors()
            model.observe_invalid(time.perf_counter() - start)
            return 422, _problem("invalid-request", str(exc), field=exc.loc)
        n = len(batch.numerical)
        if batch.oov is not None:
            for j in batch.oov.nonzero()[0]:
                model.oov[j].inc(int(batch.oov[j]))
        try:
            with torch.inference_mode():
                probs = model.engine(
                    torch.from_numpy(batch.categorical), torch.from_numpy(batch.numerical)
                )
            columns = probs.numpy().T.tolist()
        except Exception:
            log.exception("forward failed for %s %s", model.scenario, model.version)
            model.internal_errors()
            model.observe_error(time.perf_counter() - start)
            return 500, _problem("internal-error", "internal error during inference")
        payload = orjson.dumps(
            {
                "scenario": model.scenario,
                "model_version": model.version,
                "predictions": dict(zip(model.tasks, columns, strict=True)),
            }
        )
        model.batch_size(n)
        model.instances(n)
        model.observe_ok(time.perf_counter() - start)
        return 200, payload


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` (checked before reading when declared)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def predict_openapi(schema: FeatureSchema, max_batch: int) -> dict[str, Any]:
    """OpenAPI for the predict route. The body is parsed by hand on the hot path (no pydantic
    model per instance), so its schema is declared here, from the feature schema."""
    props: dict[str, Any] = {}
    for c in schema.categorical:
        table = schema.table_of(c)
        props[c] = {
            "type": "integer",
            "minimum": 0,
            "description": f"raw id, hashed into table {table.name!r} ({table.size} buckets)"
            if table.hashed
            else f"id below {table.size} (larger ids: the out-of-vocabulary row)",
        }
    for c, norm in zip(schema.numerical, schema.normalization, strict=True):
        props[c] = {"type": "number"}
        if norm != "none":
            props[c]["description"] = f"raw value; the gateway applies {norm} normalization"
    instance = {"type": "object", "properties": props, "required": list(props)}
    example = {c: 0 for c in schema.categorical} | {c: 0.0 for c in schema.numerical}
    body = {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "items": instance, "minItems": 1,
                          "maxItems": max_batch},
        },
    }  # fmt: skip
    error = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": body, "example": {"instances": [example]}}},
        },
        "responses": {
            "200": {
                "description": "probabilities per task, in instance order",
                "content": {
                    JSON: {
                        "example": {
                            "scenario": "NL",
                            "model_version": "v000005-r00005-619f66de",
                            "predictions": {t: [0.0312] for t in schema.tasks},
                        }
                    }
                },
            },
            "404": {"description": "unknown scenario (the known ones are listed)", **error},
            "500": {"description": "the forward pass failed", **error},
            "413": {"description": "body larger than the configured limit", **error},
            "422": {
                "description": "a missing feature, a wrong type or too many instances; "
                "the message names the field and the instance",
                **error,
            },
            "431": {"description": "request line and headers larger than 64 KiB", **error},
            "429": {
                "description": "over the per-client rate (rate_limit_per_second); see the "
                "Retry-After header",
                **error,
            },
            "503": {"description": "the scenario is published but no model is loaded yet", **error},
        },
    }


def create_app(settings: GatewaySettings) -> FastAPI:
    """A gateway app over ``settings.registry``; the watcher starts with the app's lifespan."""
    metrics = GatewayMetrics()
    registry = ModelRegistry(settings.registry)
    store = ModelStore(
        registry, settings.feature_schema(), metrics, engine=settings.engine,
        device=settings.device,
    )  # fmt: skip
    watcher = RegistryWatcher(store, settings.poll_interval)
    predictor = Predictor(settings)
    executor = (
        ThreadPoolExecutor(settings.workers, thread_name_prefix="infer")
        if settings.workers > 0
        else None
    )
    body_limit = settings.body_limit
    buckets = (
        TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.rate_limit_per_second > 0
        else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(settings.threads)
        watcher.start()
        log.info(
            "gateway over %s: torch threads %d, inference workers %d, engine %s on %s",
            settings.registry, settings.threads, settings.workers, settings.engine, store.device,
        )  # fmt: skip
        try:
            yield
        finally:
            watcher.stop()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(previous_threads)  # matters when embedded (tests)

    app = FastAPI(
        title="msmtrec gateway",
        description="Per-scenario CTR/CTCVR predictions from the PF-MSMTrec model registry",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)  # Swagger UI and ReDoc from local files, no CDN
    install_problem_handlers(app)  # every 4xx/5xx as RFC 9457 problem details
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.watcher = watcher

    @app.post(
        "/v1/scenarios/{scenario}/predict",
        openapi_extra=predict_openapi(settings.feature_schema(), settings.max_batch),
    )
    async def predict(scenario: str, request: Request) -> Response:
        """Body ``{"instances": [{feature: value, …}, …]}`` → per-task probabilities."""
        if buckets is not None:
            wait = buckets.take(request.client.host if request.client else "")
            if wait > 0:
                metrics.errors.labels(UNKNOWN, "rate_limited").inc()
                return problem_response(
                    "rate-limited",
                    f"over {settings.rate_limit_per_second:g} requests/s per client",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        model = store.get(scenario)  # the one reference this request uses to the end
        if model is None:
            return _missing(scenario)
        raw = await _read_body(request, body_limit)
        if raw is None:
            model.validation_errors()
            return problem_response(
                "body-too-large", f"body: larger than {body_limit} bytes", field="body"
            )
        if executor is None:
            status, payload = predictor(model, raw)
        else:
            loop = asyncio.get_running_loop()
            status, payload = await loop.run_in_executor(executor, predictor, model, raw)
        return Response(
            payload, status_code=status, media_type=JSON if status < 400 else PROBLEM_JSON
        )

    def _missing(scenario: str) -> Response:
        if scenario in store.known:
            metrics.errors.labels(scenario, "not_loaded").inc()
            refusal = store.refusals.get(scenario)
            why = f": {refusal.reason}" if refusal else ""
            return problem_response(
                "model-not-loaded",
                f"scenario {scenario!r} has no loaded model yet{why}",
                field="scenario",
                headers={"Retry-After": "1"},
            )
        metrics.errors.labels(UNKNOWN, "unknown_scenario").inc()
        known = sorted(store.snapshot())
        return problem_response(
            "unknown-scenario",
            f"unknown scenario {scenario!r}; known scenarios: {known}",
            field="scenario",
            known=known,
        )

    @app.get("/v1/scenarios")
    def scenarios() -> Response:
        models = store.snapshot()
        out = []
        for s in sorted(set(store.known) | set(models)):
            m = models.get(s)
            entry: dict[str, Any] = {"scenario": s, "loaded": m is not None}
            if m is not None:
                entry.update(m.info.summary())
                entry["loaded_at"] = m.loaded_at
            refusal = store.refusals.get(s)
            if refusal is not None:
                entry["last_refused"] = {
                    "version": refusal.version, "reason": refusal.reason, "at": refusal.at,
                }  # fmt: skip
            out.append(entry)
        return _json(200, {"scenarios": out})

    @app.get("/healthz")
    def healthz() -> Response:
        return _json(200, {"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ready, waiting = store.readiness()
        versions = {s: m.version for s, m in store.snapshot().items()}
        if ready:
            return _json(200, {"status": "ready", "scenarios": versions})
        return problem_response(
            "not-ready",
            "waiting for: " + "; ".join(f"{s}: {why}" for s, why in sorted(waiting.items())),
            waiting_for=waiting,
            scenarios=versions,
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
