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
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from aggregator.federation import Federation
from aggregator.metrics import FederationMetrics
from msmtrec import __version__
from msmtrec.http_limits import BoundedHttpToolsProtocol


class StatusModel(BaseModel):
    phase: str = Field(description="waiting_for_clients | open | aggregating | finished")
    round: int = Field(description="the open round (the last one once finished)")
    completed_rounds: int
    total_rounds: int
    deadline_unix: float | None = Field(description="when the open round's deadline passes")
    deadline_in_seconds: float | None
    min_clients: int
    scenarios: list[str] = Field(description="scenarios of the federation")
    joined: list[str]
    live: list[str] = Field(description="joined clients whose heartbeat is recent")
    submitted: list[str] = Field(description="submissions received for the open round")
    waiting_for: str = Field(description="what the federation is doing or waiting for")
    resumed_from_round: int | None = Field(description="completed rounds found on start")
    method: str
    preset: str
    seed: int
    spec_digest: str
    payload_bytes: int = Field(description="bytes of one client's shared parameters")
    state_checksum: str = Field(
        description="sha256 over strategy state, round, phase, joined clients and accepted "
        "submissions; unchanged by any refused call"
    )
    strategy_checksum: str


class RoundClient(BaseModel):
    model_config = ConfigDict(extra="allow")
    participated: bool
    num_samples: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    upload_seconds: float | None = None
    download_seconds: float | None = None
    metrics: dict[str, float] | None = Field(None, description="local training metrics")
    eval: dict[str, dict[str, dict[str, Any]]] | None = Field(
        None, description="split → task → {auc, logloss, n, positives} of the personalized model"
    )
    client_timings: dict[str, float] | None = None


class RoundModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    round: int
    opened_at: float
    closed_at: float
    duration_seconds: float
    closed_by: str = Field(description="all_submitted | deadline")
    deadline_extensions: int
    resumed_after_restart: bool
    participants: list[str]
    not_submitted: list[str]
    num_samples: int
    bytes_in: int
    bytes_out: int
    aggregation_seconds: float
    checkpoint_seconds: float | None = None
    timing: dict[str, float | str] = Field(
        description="wall_seconds (open → next open) split along the critical path: "
        "critical_client (last submitter) download/evaluation/local_training/upload/"
        "client_other seconds, close_latency_seconds, aggregation_seconds, "
        "checkpoint_seconds; plus local_training_seconds_max and transfer_seconds_max"
    )
    state_checksum: str
    clients: dict[str, RoundClient]
    dp_epsilon: dict[str, float] | None = Field(
        None,
        description="differential privacy: ε each private client reports having spent so far "
        "(scenario → ε; docs/PRIVACY.md)",
    )


class ClientModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    scenario: str
    joined: bool
    live: bool | None = None
    rounds: list[int] | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


def create_app(
    federation: Federation,
    metrics: FederationMetrics | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(
        title="msmtrec aggregator status",
        version=__version__,
        description="Read-only status of a PF-MSMTrec federation (rounds, clients, metrics).",
    )

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The gRPC server accepts calls and the state is loaded",
        responses={503: {"description": "not ready yet"}},
    )
    def readyz() -> JSONResponse:
        ok = ready() and federation.ready
        return JSONResponse(
            {"status": "ready" if ok else "starting", "phase": federation.status().phase.value},
            status_code=200 if ok else 503,
        )

    @app.get("/v1/status", response_model=StatusModel, summary="Current round and its waits")
    def status() -> dict[str, Any]:
        return federation.status_dict()

    @app.get("/v1/rounds", response_model=list[RoundModel], summary="Every completed round")
    def rounds() -> list[dict[str, Any]]:
        return federation.rounds_list()

    @app.get(
        "/v1/rounds/{n}",
        response_model=RoundModel,
        summary="One completed round",
        responses={404: {"description": "no such completed round"}},
    )
    def one_round(n: int) -> dict[str, Any]:
        for rec in federation.rounds_list():
            if rec["round"] == n:
                return rec
        raise HTTPException(404, f"round {n} has not completed")

    @app.get("/v1/clients", response_model=list[ClientModel], summary="Scenarios and liveness")
    def clients() -> list[dict[str, Any]]:
        return federation.clients_dict()

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
