"""Refusal reasons of the wire contract, as the values both sides raise and match.

The proto enum ``RefusalReason`` (protos/…/federation.proto) is the one list; :class:`Reason`
is built from its descriptor, so a reason added to the contract is a member here at once and
a reason not in the contract cannot be spelled (``Reason.NO_SUCH`` is an AttributeError,
``Reason("no-such")`` a ValueError). On the wire a reason travels in the trailing metadata
key :data:`REASON_KEY` as its dash spelling (``REFUSAL_REASON_WRONG_ROUND`` → ``wrong-round``),
the spelling the metrics label and docs/FEDERATION.md use too. :data:`STATUS` gives the one
gRPC status code (a ``grpc.StatusCode`` member name) each reason is sent with.
"""

from __future__ import annotations

from enum import StrEnum

from msmtrec_proto.federation.v1 import federation_pb2 as pb

REASON_KEY = "msmtrec-reason"
# With RESOURCE_EXHAUSTED rate-limited: milliseconds until a call of this token will pass.
RETRY_AFTER_KEY = "retry-after-ms"
_PREFIX = "REFUSAL_REASON_"


def _wire_spelling(proto_name: str) -> str:
    return proto_name.removeprefix(_PREFIX).lower().replace("_", "-")


Reason = StrEnum(  # type: ignore[misc]
    "Reason",
    [
        (name.removeprefix(_PREFIX), _wire_spelling(name))
        for name in pb.RefusalReason.keys()  # noqa: SIM118 (an EnumTypeWrapper, not a dict)
        if name != _PREFIX + "UNSPECIFIED"
    ],
    module=__name__,
)
Reason.__doc__ = "Why the aggregator refused a call (the contract's RefusalReason, dash-spelled)."

# the gRPC status code each reason is sent with (grpc.StatusCode member names)
_CODES: dict[str, tuple[str, ...]] = {
    "UNAUTHENTICATED": ("NO_TOKEN", "BAD_TOKEN"),
    "PERMISSION_DENIED": ("WRONG_SCENARIO", "UNKNOWN_SCENARIO", "CERTIFICATE_SCENARIO_MISMATCH"),
    "INVALID_ARGUMENT": (
        "BAD_SCENARIO",
        "BAD_MANIFEST",
        "BAD_VALUES",
        "STREAM_TRUNCATED",
        "STREAM_OVERFLOW",
        "NO_HEADER",
        "BAD_STREAM",
        "BAD_NUM_SAMPLES",
        "BAD_METRICS",
    ),
    "RESOURCE_EXHAUSTED": ("TOO_LARGE", "TOO_MANY_CALLS", "RATE_LIMITED"),
    "FAILED_PRECONDITION": (
        "WRONG_ROUND",
        "NOT_OPEN",
        "FINISHED",
        "NOT_JOINED",
        "SIGNATURE_MISMATCH",
        "SPEC_MISMATCH",
        "UNKNOWN_ROUND",
        "NOT_SAMPLED",
        "DATASET_SPEC_MISMATCH",
    ),
    "ALREADY_EXISTS": ("CONFLICTING_RESUBMISSION",),
}
STATUS: dict[Reason, str] = {Reason[name]: code for code, names in _CODES.items() for name in names}


def parse_reason(text: str | bytes | None) -> Reason | None:
    """The reason a trailing-metadata value names, or None (absent, or from a newer server)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    try:
        return Reason(text) if text else None
    except ValueError:
        return None


def to_proto(reason: Reason) -> int:
    """The contract's enum number of ``reason``."""
    return pb.RefusalReason.Value(_PREFIX + Reason(reason).name)
