"""The gRPC servicer: authentication, message ⇄ core type conversion, refusals → statuses.

Every call is authenticated from its ``authorization: Bearer`` metadata *before* any request
data is read; the scenario a call names must be the token's own (else PERMISSION_DENIED).
Submissions are checked header-first (manifest against the signature and the size limit),
then streamed into a buffer of the declared size, then decoded and checked for finite
values, and only then handed to the federation. Each refusal carries its reason in the
trailing metadata key ``msmtrec-reason`` and is counted in the metrics.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from aggregator.errors import REASON_KEY, RETRY_AFTER_KEY, Reason, Refusal
from aggregator.federation import Federation, Status
from aggregator.hooks import Hooks, NoHooks
from aggregator.rounds import Phase
from msmtrec import __version__
from msmtrec.codec import Assembler, CodecError
from msmtrec.identity import check_scenario_name
from msmtrec.spec import dataset_spec_differences
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from servicekit.auth import TokenTable, bearer_token
from servicekit.ratelimit import TokenBuckets

log = logging.getLogger("aggregator.service")

PHASES = {
    Phase.WAITING: pb.PHASE_WAITING_FOR_CLIENTS,
    Phase.OPEN: pb.PHASE_OPEN,
    Phase.AGGREGATING: pb.PHASE_AGGREGATING,
    Phase.FINISHED: pb.PHASE_FINISHED,
}


def status_to_proto(st: Status) -> pb.RoundStatus:
    return pb.RoundStatus(
        phase=PHASES[st.phase],
        round=st.round,
        completed_rounds=st.completed_rounds,
        total_rounds=st.total_rounds,
        deadline_unix=st.deadline_unix or 0.0,
        joined=st.joined,
        live=st.live,
        submitted=st.submitted,
        min_clients=st.min_clients,
        message=st.message,
        you_are_joined=st.you_are_joined,
        you_submitted=st.you_submitted,
        participants=st.participants or [],
    )


def _refuse(context: grpc.ServicerContext, hooks: Hooks, rpc: str, refusal: Refusal) -> None:
    reason = refusal.reason.value  # the contract's dash spelling, e.g. "wrong-round"
    hooks.rejected(rpc, reason)
    log.info("%s refused (%s, %s): %s", rpc, refusal.code, reason, refusal.message)
    metadata = [(REASON_KEY, reason)]
    if refusal.retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(max(1, math.ceil(refusal.retry_after * 1000)))))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(getattr(grpc.StatusCode, refusal.code), refusal.message)


def unary(rpc: str) -> Callable:
    """Turn a Refusal raised by a unary handler into its status."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(self: FederationServicer, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(self, request, context)
            except Refusal as refusal:
                _refuse(context, self.hooks, rpc, refusal)

        return handler

    return wrap


@dataclass(frozen=True)
class CallLimits:
    """Calls one scenario may have in flight, in all and uploads among them."""

    calls: int = 8
    submits: int = 2
    rate: float = 0.0  # calls per second per token over time (token bucket); 0: no limit
    burst: int = 100  # calls a token may make at once before the rate applies


class InFlight:
    """Per-scenario counts of calls in flight. A slot is taken once the caller is identified
    and given back when gRPC terminates the call (completion, error or cancellation), so one
    scenario — a stolen token, a client stuck in a retry loop — holds at most ``calls``
    worker threads and ``submits`` payload buffers, whatever ``max_workers`` is."""

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self.buckets = TokenBuckets(limits.rate, limits.burst) if limits.rate > 0 else None

    def admit(self, context: grpc.ServicerContext, scenario: str, submit: bool) -> None:
        if self.buckets is not None:
            wait = self.buckets.take(scenario)
            if wait > 0:
                raise Refusal(
                    Reason.RATE_LIMITED,
                    f"scenario {scenario} is over its rate of {self.limits.rate:g} calls/s "
                    f"(aggregator settings rate_limit_per_second, rate_limit_burst); retry "
                    f"after {wait:.2f} s",
                    retry_after=wait,
                )
        kinds = [("calls", self.limits.calls)]
        if submit:
            kinds.append(("submits", self.limits.submits))
        with self._lock:
            for kind, limit in kinds:
                if self._counts.get((scenario, kind), 0) >= limit:
                    raise Refusal(
                        Reason.TOO_MANY_CALLS,
                        f"scenario {scenario} already has {limit} "
                        f"{'uploads' if kind == 'submits' else 'calls'} in flight "
                        f"(aggregator setting max_{kind}_per_scenario); retry later",
                    )
            for kind, _ in kinds:
                self._counts[(scenario, kind)] = self._counts.get((scenario, kind), 0) + 1

        def release() -> None:
            with self._lock:
                for kind, _ in kinds:
                    left = self._counts[(scenario, kind)] - 1
                    if left:
                        self._counts[(scenario, kind)] = left
                    else:
                        del self._counts[(scenario, kind)]

        if not context.add_callback(release):  # the call has already ended
            release()

    def count(self, scenario: str) -> int:
        with self._lock:
            return self._counts.get((scenario, "calls"), 0)


class FederationServicer(pb_grpc.FederationServicer):
    def __init__(
        self,
        federation: Federation,
        tokens: TokenTable | None,
        hooks: Hooks | None = None,
        *,
        bind_certificates: bool = False,
        limits: CallLimits | None = None,
    ) -> None:
        self.fed = federation
        self.tokens = tokens if tokens else None
        self.hooks: Hooks = hooks or NoHooks()
        self.bind_certificates = bind_certificates
        self.in_flight = InFlight(limits or CallLimits())

    # ------------------------------------------------------------------------- identity
    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        """The scenario the caller's token belongs to (None when running without tokens)."""
        if self.tokens is None:
            return None
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Refusal(Reason.NO_TOKEN, "missing 'authorization: Bearer <token>' metadata")
        owner = self.tokens.identify(token)
        if owner is None:
            raise Refusal(Reason.BAD_TOKEN, "invalid bearer token")
        return owner

    def _bind(self, owner: str | None, claimed: str) -> str:
        try:
            check_scenario_name(claimed)
        except ValueError as exc:
            raise Refusal(Reason.BAD_SCENARIO, str(exc)) from exc
        if owner is not None and claimed != owner:
            raise Refusal(
                Reason.WRONG_SCENARIO,
                f"this token is bound to scenario {owner}; it cannot act as {claimed}",
            )
        self.fed.check_scenario(claimed)
        return claimed

    def _identify(self, context: grpc.ServicerContext, claimed: str) -> str:
        return self._admit(context, self._authenticate(context), claimed, submit=False)

    def _admit(
        self, context: grpc.ServicerContext, owner: str | None, claimed: str, *, submit: bool
    ) -> str:
        """The scenario the caller may act as (token, then certificate), with a call slot."""
        scenario = self._bind(owner, claimed)
        if self.bind_certificates:
            self._check_certificate(context, scenario)
        self.in_flight.admit(context, scenario, submit=submit)
        return scenario

    @staticmethod
    def _check_certificate(context: grpc.ServicerContext, scenario: str) -> None:
        """With mutual TLS, the certificate must be issued to the scenario too: a stolen token
        alone, or one scenario's certificate with another's token, is not enough."""
        auth = context.auth_context()
        names = [
            n.decode(errors="replace") if isinstance(n, bytes) else str(n)
            for key in ("x509_common_name", "x509_subject_alternative_name")
            for n in auth.get(key, ())
        ]
        if scenario not in names:
            issued = ", ".join(sorted(set(names))[:4]) or "no name"
            raise Refusal(
                Reason.CERTIFICATE_SCENARIO_MISMATCH,
                f"the client certificate is issued to {issued}; it cannot act as {scenario}",
            )

    # ---------------------------------------------------------------------------- unary
    @unary("GetConfig")
    def GetConfig(self, request: pb.GetConfigRequest, context: grpc.ServicerContext):
        self._identify(context, request.scenario)
        cfg = self.fed.config()
        return pb.GetConfigResponse(
            protocol=wire.PROTOCOL,
            spec_json=cfg["spec_json"],
            spec_digest=cfg["spec_digest"],
            heartbeat_interval_ms=int(cfg["heartbeat_interval"] * 1000),
            chunk_bytes=cfg["chunk_bytes"],
            max_payload_bytes=cfg["max_payload_bytes"],
        )

    @unary("Join")
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext):
        scenario = self._identify(context, request.scenario)
        differences = dataset_spec_differences(self.fed.spec.schema, request.dataset_spec_json)
        if differences:
            raise Refusal(
                Reason.DATASET_SPEC_MISMATCH,
                f"this client's dataset spec differs from the federation's "
                f"({self.fed.spec.schema.name!r}): "
                + "; ".join(differences)
                + " (left: the federation's, right: this client's)",
            )
        session, status = self.fed.join(
            scenario,
            request.spec_digest,
            wire.specs_from_proto(request.signature),
            int(request.num_train_samples),
        )
        return pb.JoinResponse(
            client_id=scenario, session_id=session, status=status_to_proto(status)
        )

    @unary("Heartbeat")
    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext):
        scenario = self._identify(context, request.scenario)
        wait = request.wait_ms / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - 0.5))
        status = self.fed.heartbeat(scenario, wait, int(request.after_round))
        return status_to_proto(status)

    @unary("ReportMetrics")
    def ReportMetrics(self, request: pb.ReportMetricsRequest, context: grpc.ServicerContext):
        scenario = self._identify(context, request.scenario)
        self.fed.report_metrics(
            scenario,
            int(request.round),
            wire.split_metrics_from_proto(request.splits),
            dict(request.timings),
            publish_error=request.publish_error,
        )
        return pb.ReportMetricsResponse(recorded=True)

    # ------------------------------------------------------------------------ streaming
    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadChunk]:
        try:
            scenario = self._identify(context, request.scenario)
            payload = self.fed.payload(scenario, int(request.round))
        except Refusal as refusal:
            _refuse(context, self.hooks, "Download", refusal)
            return
        start = time.perf_counter()
        sent = 0
        for message in wire.download_stream(
            payload.encoded,
            self.fed.chunk_bytes,
            round_number=payload.round,
            completed=payload.completed_rounds,
            final=payload.final,
        ):
            sent += message.ByteSize()
            yield message
        self.fed.record_download(scenario, payload, sent, time.perf_counter() - start)

    def Submit(
        self, request_iterator: Iterator[pb.SubmitChunk], context: grpc.ServicerContext
    ) -> pb.SubmitResponse:
        try:
            owner = self._authenticate(context)
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "header":
                raise Refusal(
                    Reason.NO_HEADER, "the first message of a submission must be a header"
                )
            header = first.header
            scenario = self._admit(context, owner, header.scenario, submit=True)
            ticket = self.fed.begin_submission(
                scenario,
                int(header.round),
                int(header.num_samples),
                dict(header.metrics),
                wire.specs_from_proto(header.manifest.tensors),
                int(header.manifest.total_bytes),
            )
            spill = self.fed.spill
            try:
                assembler = Assembler(ticket.total_bytes, spill.buffer if spill else None)
            except OSError as exc:  # the spill directory is full: retryable, said so
                log.warning("%s: cannot store a submission: %s", scenario, exc)
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the aggregator cannot store the submission now ({exc.strerror}); retry",
                )
            received = first.ByteSize()
            for message in request_iterator:
                if message.WhichOneof("kind") != "data":
                    raise Refusal(
                        Reason.BAD_STREAM, "a submission has one header, then data chunks"
                    )
                try:
                    assembler.feed(message.data)
                except CodecError as exc:
                    raise Refusal(Reason.STREAM_OVERFLOW, str(exc)) from exc
                received += message.ByteSize()
            try:
                buffer = assembler.finish()
            except CodecError as exc:
                raise Refusal(Reason.STREAM_TRUNCATED, str(exc)) from exc
            result = self.fed.complete_submission(ticket, buffer, received)
        except Refusal as refusal:
            _refuse(context, self.hooks, "Submit", refusal)
            raise AssertionError("unreachable") from None
        return pb.SubmitResponse(
            accepted=True,
            duplicate=result.duplicate,
            round=ticket.round,
            payload_sha256=result.digest,
            status=status_to_proto(result.status),
        )


def client_version() -> str:
    return f"msmtrec/{__version__}"
