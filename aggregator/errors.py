"""Refusals with a status code and a machine-readable reason, independent of gRPC.

The federation logic raises :class:`Refusal`; the gRPC layer turns it into a status (the code
names are ``grpc.StatusCode`` members) with the reason in the trailing metadata key
``msmtrec-reason``, so clients branch on the reason, not on message text.
"""

from __future__ import annotations

REASON_KEY = "msmtrec-reason"


class Refusal(Exception):
    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # e.g. "FAILED_PRECONDITION"
        self.reason = reason  # e.g. "wrong-round"
        self.message = message


def invalid(reason: str, message: str) -> Refusal:
    return Refusal("INVALID_ARGUMENT", reason, message)


def precondition(reason: str, message: str) -> Refusal:
    return Refusal("FAILED_PRECONDITION", reason, message)
