"""The REST status API (FastAPI, its own port): what operators and tests look at.

Read-only views of the federation: health, readiness, the current round and what it waits
for, the history of rounds (participants, duration, bytes, timings, each scenario's
metrics), the clients, and Prometheus metrics. OpenAPI docs at ``/docs`` and
``/openapi.json``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from aggregator.dashboard import STATIC_DIR, index_html
from aggregator.federation import Federation
from aggregator.metrics import FederationMetrics
from aggregator.records import RoundRecord
from aggregator.views import ClientView, StatusView, client_views, status_view
from msmtrec import __version__
from servicekit.api_docs import add_offline_docs
from servicekit.http_limits import BoundedHttpToolsProtocol
from servicekit.problems import Problem, install_problem_handlers, problem_response


def create_app(
    federation: Federation,
    metrics: FederationMetrics | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(
        title="msmtrec aggregator status",
        version=__version__,
        description="Read-only status of a PF-MSMTrec federation (rounds, clients, metrics).",
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)  # Swagger UI and ReDoc from local files, no CDN
    install_problem_handlers(app)  # every 4xx/5xx as RFC 9457 problem details

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("dashboard")  # relative: works behind a path prefix too

    @app.get("/dashboard", include_in_schema=False, response_class=HTMLResponse)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(index_html(), headers={"Cache-Control": "no-cache"})

    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The gRPC server accepts calls and the state is loaded",
        responses={503: {"description": "not ready yet"}},
    )
    def readyz() -> Response:
        phase = federation.status().phase.value
        storage = federation.storage_problem()
        if ready() and federation.ready:
            return JSONResponse({"status": "ready", "phase": phase, "storage_problem": storage})
        return problem_response(
            "not-ready",
            "the gRPC server or the federation state is not up yet",
            phase=phase,
            storage_problem=storage,
        )

    @app.get("/v1/status", response_model=StatusView, summary="Current round and its waits")
    def status() -> StatusView:
        return status_view(federation)

    @app.get("/v1/rounds", response_model=list[RoundRecord], summary="Every completed round")
    def rounds() -> list[RoundRecord]:
        return federation.rounds_list()

    @app.get(
        "/v1/rounds/{n}",
        response_model=RoundRecord,
        summary="One completed round",
        responses={404: {"description": "no such completed round"}},
    )
    def one_round(n: int) -> RoundRecord:
        for rec in federation.rounds_list():
            if rec.round == n:
                return rec
        raise Problem("not-found", f"round {n} has not completed", field="n")

    @app.get("/v1/clients", response_model=list[ClientView], summary="Scenarios and liveness")
    def clients() -> list[ClientView]:
        return client_views(federation)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus() -> Response:
        body = metrics.exposition() if metrics is not None else b""
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


class StatusServer:
    """uvicorn in a background thread of the aggregator process."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            http=BoundedHttpToolsProtocol,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="status-api", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # uvicorn exits via SystemExit when it cannot bind
            self.error = exc

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(
                    f"status API did not start on {self.server.config.host}:"
                    f"{self.server.config.port} ({self.error or 'timeout'})"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
