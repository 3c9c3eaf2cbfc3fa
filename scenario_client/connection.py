"""The client's channel to the aggregator: credentials, deadlines, retries.

* Every call has a deadline (``rpc_timeout`` for unary calls, ``transfer_timeout`` for
  parameter streams).
* UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED ``too-many-calls`` (this scenario
  has too many calls in flight, e.g. old ones the server has not seen end yet) are retried
  with exponential backoff and jitter, for as long as the aggregator has been unreachable
  for less than ``reconnect_timeout``; every call of the protocol is safe to repeat
  (submissions are idempotent on the server).
* Any other status is a refusal: it is raised as :class:`Refused` with the server's reason
  (trailing metadata ``msmtrec-reason``) for the caller to act on.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from msmtrec_proto.federation.v1 import federation_pb2_grpc as pb_grpc
from msmtrec_proto.refusals import REASON_KEY, Reason, parse_reason

log = logging.getLogger("scenario_client")

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
BUSY = Reason.TOO_MANY_CALLS  # RESOURCE_EXHAUSTED for this scenario's calls in flight: retried
MAX_MESSAGE = 64 << 20


class ClientError(Exception):
    """A condition the client cannot recover from; the message says what to do."""


class Refused(Exception):
    """The aggregator answered with a non-retryable status."""

    def __init__(
        self, rpc: str, code: grpc.StatusCode, reason: Reason | None, details: str
    ) -> None:
        shown = reason.value if reason is not None else "no reason"
        super().__init__(f"{rpc}: {code.name} ({shown}): {details}")
        # None: no reason, or one this client's contract does not know (a newer server)
        self.rpc, self.code, self.reason, self.details = rpc, code, reason, details


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 10.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential, capped, with "equal jitter": half fixed, half random, so clients
        that lost the aggregator together do not come back in lockstep."""
        base = min(self.maximum, self.initial * self.multiplier**attempt)
        return base / 2 + rng.uniform(0, base / 2)


def _reason(error: grpc.RpcError) -> Reason | None:
    try:
        for key, value in error.trailing_metadata() or ():
            if key == REASON_KEY:
                return parse_reason(value)
    except Exception:
        pass
    return None


def tls_hint(details: str, tls: bool) -> str:
    """A hint for the transport errors that are configuration mistakes, not outages."""
    text = details.lower()
    if any(word in text for word in ("ssl", "handshake", "certificate", "tls")):
        return (
            " — TLS handshake failed: check --ca-cert (and --client-cert/--client-key "
            "for mutual TLS, --tls-server-name if the host differs from the certificate)"
        )
    if not tls and "socket closed" in text:
        return " — the connection was closed at once: does the aggregator use TLS (--ca-cert)?"
    return ""


class Connection:
    def __init__(
        self,
        target: str,
        token: str | None,
        *,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        tls_server_name: str | None = None,
        tls: bool = False,
        rpc_timeout: float = 30.0,
        transfer_timeout: float = 600.0,
        reconnect_timeout: float = 300.0,
        backoff: Backoff | None = None,
        seed: int | None = None,
    ) -> None:
        self.target = target
        self.rpc_timeout = rpc_timeout
        self.transfer_timeout = transfer_timeout
        self.reconnect_timeout = reconnect_timeout
        self.backoff = backoff or Backoff()
        self.rng = random.Random(seed)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Our own retry loop paces reconnects; keep the channel's own backoff short so
            # it does not sit in TRANSIENT_FAILURE long after the aggregator is back.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),
        ]
        if tls or ca_cert or client_cert:
            if (client_cert is None) != (client_key is None):
                raise ClientError("mutual TLS needs both --client-cert and --client-key")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_cert).read_bytes() if ca_cert else None,
                private_key=Path(client_key).read_bytes() if client_key else None,
                certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
            )
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self.channel = grpc.secure_channel(target, credentials, options=options)
            self.tls = True
        else:
            self.channel = grpc.insecure_channel(target, options=options)
            self.tls = False
        self.stub = pb_grpc.FederationStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(self, rpc: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``fn`` (one gRPC call), retrying while the aggregator is unreachable."""
        attempt = 0
        first_failure: float | None = None
        hint = ""  # the most telling hint seen during this outage
        while True:
            try:
                return fn()
            except grpc.RpcError as error:
                code = error.code() if callable(getattr(error, "code", None)) else None
                details = error.details() if callable(getattr(error, "details", None)) else ""
                details = details or str(error)
                busy = code is grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(error) == BUSY
                if (code not in RETRYABLE and not busy) or not retry:
                    if code is None:
                        raise ClientError(f"{rpc} failed: {details}") from error
                    raise Refused(rpc, code, _reason(error), details) from error
                now = time.monotonic()
                first_failure = first_failure or now
                hint = tls_hint(details, self.tls) or hint
                if now - first_failure >= self.reconnect_timeout:
                    raise ClientError(
                        f"aggregator at {self.target} unreachable for "
                        f"{now - first_failure:.0f} s ({code.name}: {details}){hint}"
                    ) from error
                delay = self.backoff.delay(attempt, self.rng)
                delay = min(delay, max(0.05, first_failure + self.reconnect_timeout - now))
                log.warning(
                    "%s: %s (%s); retrying in %.1f s%s",
                    rpc, code.name, details.splitlines()[0][:200], delay, hint,
                )  # fmt: skip
                time.sleep(delay)
                attempt += 1
