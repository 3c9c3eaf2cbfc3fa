"""What the federation's calls answer: the round status a client sees, a submission's
receipt and a payload to download. Plain data, shared by the federation's parts and the gRPC
servicer."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.rounds import Phase
from msmtrec.codec import Encoded


@dataclass
class Status:
    phase: Phase
    round: int
    completed_rounds: int
    total_rounds: int
    deadline_unix: float | None
    joined: list[str]
    live: list[str]
    submitted: list[str]
    min_clients: int
    message: str
    you_are_joined: bool = False
    you_submitted: bool = False
    participants: list[str] | None = None  # the open round's sample (None: every client)


@dataclass
class SubmitResult:
    duplicate: bool
    digest: str
    status: Status


@dataclass
class Payload:
    round: int  # the round this payload starts
    completed_rounds: int
    final: bool
    encoded: Encoded
