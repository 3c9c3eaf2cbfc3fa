"""Refusals with a reason from the wire contract, independent of gRPC.

The federation logic raises :class:`Refusal` with a :class:`~msmtrec_proto.refusals.Reason`
(the proto enum ``RefusalReason``); the gRPC layer turns it into the reason's one status code
(``STATUS``) with the reason in the trailing metadata key ``msmtrec-reason``, so clients
branch on the reason, not on message text. A reason outside the contract cannot be raised.
"""

from __future__ import annotations

from msmtrec_proto.refusals import REASON_KEY, STATUS, Reason

__all__ = ["REASON_KEY", "Reason", "Refusal"]


class Refusal(Exception):
    """A call the aggregator refuses: ``reason`` (contract enum), ``code`` (its gRPC status
    code name, e.g. ``FAILED_PRECONDITION``) and a message for the operator."""

    def __init__(self, reason: Reason, message: str) -> None:
        if not isinstance(reason, Reason):
            raise TypeError(f"a refusal reason must be a Reason of the contract, not {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.code = STATUS[reason]
        self.message = message
