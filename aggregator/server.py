"""The aggregator process: federation + gRPC server + status API + controller thread.

Start-up refuses unsafe or inconsistent settings with one clear line (no tokens without
``--insecure-dev``, a TLS key without a certificate, a checkpoint from other settings). The
controller thread advances the round state machine; SIGTERM/SIGINT stop the process
gracefully (health NOT_SERVING, in-flight calls get a grace period). A checkpoint that cannot
be written (or a round that cannot be closed) stops the process with exit code 3, so an
orchestrator restarts it from the last durable round rather than letting it run on with
state it could lose.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aggregator.checkpoint import CheckpointStore
from aggregator.closing import CheckpointFailure, CloseFailure
from aggregator.federation import Federation
from aggregator.hooks import Hooks
from aggregator.metrics import FederationMetrics
from aggregator.service import CallLimits, FederationServicer
from aggregator.settings import AggregatorSettings
from aggregator.statelock import StateDirLock
from aggregator.status_api import StatusServer, create_app
from msmtrec.identity import check_scenario_name
from msmtrec.spill import SpillDir
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import TokenTable, load_tokens

log = logging.getLogger("aggregator")

EXIT_CONFIG = 2
# The federation's state could not be advanced or made durable (a checkpoint that cannot be
# written, a round that failed to close, a controller that keeps failing): stop, so that an
# orchestrator restarts the process from the last durable round (docs/RELIABILITY.md).
EXIT_CHECKPOINT = 3
MAX_CONTROLLER_ERRORS = 20  # unexpected controller errors in a row (0.1 s apart) before exit 3


class ConfigError(ValueError):
    """Settings that cannot run; the message says what to change."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def resolve_scenarios(settings: AggregatorSettings, tokens: TokenTable) -> list[str]:
    if settings.scenarios:
        scenarios = sorted(set(settings.scenarios))
        for s in scenarios:
            check_scenario_name(s)
        if tokens:
            missing = sorted(set(scenarios) - set(tokens.scenarios))
            if missing:
                raise ConfigError(f"no token for scenarios {missing}; add them to the tokens")
        return scenarios
    if tokens:
        return tokens.scenarios
    raise ConfigError("with --insecure-dev and no tokens, list the scenarios with --scenarios")


def server_credentials(settings: AggregatorSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    key, cert = Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def build_federation(
    settings: AggregatorSettings, metrics: Hooks | None = None
) -> tuple[Federation, TokenTable]:
    tokens = load_tokens(settings.tokens_file, settings.tokens)
    if not tokens and not settings.insecure_dev:
        raise ConfigError(
            "no tokens: give --tokens-file (or MSMTREC_AGGREGATOR_TOKENS), or --insecure-dev "
            "for a development run without authentication"
        )
    scenarios = resolve_scenarios(settings, tokens)
    state_dir = Path(settings.state_dir)
    store = CheckpointStore(state_dir / "checkpoints", settings.keep_checkpoints)
    federation = Federation(
        settings.spec(),
        scenarios,
        store,
        min_clients=settings.min_clients,
        start_wait=settings.start_wait_seconds,
        deadline=settings.round_deadline_seconds,
        heartbeat_interval=settings.heartbeat_interval_seconds,
        heartbeat_patience=settings.heartbeat_patience,
        max_poll=settings.max_poll_seconds,
        chunk_bytes=settings.chunk_bytes,
        max_payload_bytes=settings.max_payload_bytes,
        history_path=state_dir / "history.json",
        history_rounds=settings.history_rounds,
        hooks=metrics,
        spill=SpillDir(settings.spill_dir) if settings.spill_dir is not None else None,
    )
    federation.closer.attempts = settings.checkpoint_attempts
    federation.closer.retry_seconds = settings.checkpoint_retry_seconds
    return federation, tokens


class Aggregator:
    """The running service: gRPC server, status API and controller thread in one object,
    so the CLI and in-process tests start and stop it the same way."""

    def __init__(self, settings: AggregatorSettings) -> None:
        """Build everything; raises ConfigError for settings that cannot run."""
        self.settings = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.metrics = FederationMetrics()
        # Before anything in the state directory is read or cleaned up: a second aggregator
        # on the same directory refuses here (StateDirBusy), touching nothing.
        self.state_lock = StateDirLock(Path(settings.state_dir)).acquire()
        self.tracking = None
        hooks = self.metrics
        try:
            if settings.tensorboard is not None:
                from aggregator.tracking import TensorBoardHooks
                from servicekit.tracking import TensorBoardTracker

                hooks = self.tracking = TensorBoardHooks(
                    self.metrics, TensorBoardTracker(settings.tensorboard)
                )
            self.federation, self.tokens = build_federation(settings, hooks)
        except BaseException:
            if self.tracking is not None:
                self.tracking.close()
            self.state_lock.release()
            raise
        self.metrics.bind(self.federation)
        self.credentials = server_credentials(settings)
        self.stop_event = threading.Event()
        self.exit_code = 0
        self.port = 0
        self.grpc_server: grpc.Server | None = None
        self.health: health.HealthServicer | None = None
        self.status: StatusServer | None = None
        self.controller: threading.Thread | None = None

    def start(self) -> Aggregator:
        """Serve; a start that fails (ConfigError: a port in use, say) gives the state
        directory's lock back, so that a corrected start in the same process can take it."""
        try:
            return self._start()
        except BaseException:
            self.state_lock.release()
            raise

    def _start(self) -> Aggregator:
        settings = self.settings
        if not self.tokens:
            log.warning(
                "!!! INSECURE DEV MODE: no bearer tokens; any caller can act as any scenario. "
                "Never expose this aggregator beyond a development machine. !!!"
            )
        max_message = settings.chunk_bytes + wire.MESSAGE_SLACK
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),  # a second aggregator on the same port must fail
                # Clients ping every keepalive_seconds (≥ 1 s, also between calls): permit it
                # rather than answer GOAWAY too_many_pings; and ping them, so that a call of a
                # client behind a dead network path ends instead of holding its thread.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ],
        )
        self.servicer = FederationServicer(
            self.federation,
            self.tokens,
            self.metrics,
            bind_certificates=bool(settings.tls_client_ca)
            and settings.tls_client_identity == "scenario",
            limits=CallLimits(
                settings.max_calls_per_scenario,
                settings.max_submits_per_scenario,
                settings.rate_limit_per_second,
                settings.rate_limit_burst,
            ),
        )
        pb_grpc.add_FederationServicer_to_server(self.servicer, server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (wire.SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.port}"
        try:
            port = (
                server.add_secure_port(address, self.credentials)
                if self.credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen on {address} (port in use?)")
        self.port = port
        server.start()
        self.grpc_server = server
        if settings.status_port:
            app = create_app(self.federation, self.metrics)
            self.status = StatusServer(app, settings.status_host, settings.status_port)
            try:
                self.status.start()
            except RuntimeError as exc:
                server.stop(0)
                raise ConfigError(str(exc)) from exc
        for service in ("", wire.SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.controller = threading.Thread(target=self._control, name="controller", daemon=True)
        self.controller.start()
        return self

    def _control(self) -> None:
        """Advance the federation until stopped. A round that cannot be closed stops the
        process at once (exit 3); any other error is logged with its traceback and retried,
        and stops the process too once it repeats MAX_CONTROLLER_ERRORS times in a row."""
        fed = self.federation
        errors = 0
        while not self.stop_event.is_set():
            try:
                fed.tick()
                errors = 0
            except CloseFailure as exc:
                if self.stop_event.is_set():  # stopped while a checkpoint was retried
                    log.warning("%s; stopped before it was durable (a restart re-runs it)", exc)
                    return
                # A checkpoint that cannot be written was logged at each attempt (with the
                # disk's own error); any other close failure is a bug: its traceback.
                log.critical(
                    "%s; stopping so that a restart resumes from the last checkpoint", exc,
                    exc_info=None if isinstance(exc, CheckpointFailure) else exc,
                )  # fmt: skip
                self._fail()
                return
            except Exception:
                errors += 1
                log.exception("controller error (%d of %d in a row)", errors, MAX_CONTROLLER_ERRORS)
                if errors >= MAX_CONTROLLER_ERRORS:
                    log.critical(
                        "the controller keeps failing; stopping so that a restart resumes "
                        "from the last checkpoint"
                    )
                    self._fail()
                    return
            if self.settings.exit_when_done and fed.done():
                log.info("finished and every client reported; exiting")
                self.stop_event.set()
                return
            fed.wait_for_change(0.1)

    def _fail(self) -> None:
        self.exit_code = EXIT_CHECKPOINT
        self.stop_event.set()

    def stop(self, grace: float | None = None) -> int:
        """Stop within about ``grace`` seconds: long polls are released at once, in-flight
        calls get the grace period, and nothing here waits longer than that for a thread
        that does not end (``serve`` adds a hard bound on top)."""
        self.stop_event.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self.federation.shutdown()
        if self.health is not None:
            self.health.enter_graceful_shutdown()
        if self.grpc_server is not None:
            # stop() cancels what is still running after the grace; the handlers' threads
            # may take a moment more to notice, which is not waited for beyond 1 s.
            self.grpc_server.stop(grace).wait(grace + 1.0)
        if self.status is not None:
            self.status.stop()
        if self.controller is not None:
            self.controller.join(timeout=max(0.5, deadline - time.monotonic()))
        if self.tracking is not None:
            self.tracking.close()
        self.state_lock.release()
        return self.exit_code


def serve(settings: AggregatorSettings) -> int:
    """Run until finished (with exit_when_done) or stopped by a signal."""
    configure_logging(settings.log_level)
    try:
        agg = Aggregator(settings).start()
    except (ConfigError, ValueError, OSError) as exc:  # StateDirBusy is a ValueError
        log.error("cannot start the aggregator: %s", exc)
        return EXIT_CONFIG
    fed = agg.federation
    tls = "TLS" if settings.tls_cert else "plaintext"
    if settings.tls_client_ca:
        tls += " + client certificates"
    log.info(
        "aggregator %s listening on %s:%d (%s); status API %s; state in %s; %s",
        fed.spec.method,
        settings.host,
        agg.port,
        tls,
        f"http://{settings.status_host}:{settings.status_port}"
        if settings.status_port
        else "disabled",
        settings.state_dir,
        f"resumed after round {fed.resumed_from}" if fed.resumed_from is not None else "fresh",
    )

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d, stopping", signum)
        agg.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not agg.stop_event.wait(0.5):
        pass
    return _stop_within(agg, settings.shutdown_grace_seconds + STOP_SLACK_SECONDS)


STOP_SLACK_SECONDS = 3.0  # beyond the grace: status server, controller, logging


def _stop_within(agg: Aggregator, bound: float) -> int:
    """Stop ``agg`` and return its exit code; if that has not finished within ``bound``
    seconds (a handler or the controller stuck where no signal reaches it), leave at once
    with ``os._exit``: the process must end, and everything durable already is (a
    checkpoint is complete before its round counts)."""
    result: list[int] = []
    stopper = threading.Thread(target=lambda: result.append(agg.stop()), daemon=True)
    stopper.start()
    stopper.join(bound)
    if result:
        log.info("aggregator stopped")
        # The interpreter's exit joins gRPC's worker threads; one stuck in a handler would
        # hold the process past the grace period, so a daemon watchdog ends it regardless.
        watchdog = threading.Timer(STOP_SLACK_SECONDS, _exit_now, (result[0],))
        watchdog.daemon = True
        watchdog.start()
        return result[0]
    log.error("the aggregator did not stop within %.0f s; exiting now", bound)
    _exit_now(agg.exit_code or EXIT_CHECKPOINT)
    return agg.exit_code  # not reached


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
