"""Read-only views of a federation for the status API and tools: what it does, who is there.

Response models and the functions that fill them from a :class:`Federation` under its lock.
Round records are served as they are stored (:class:`~aggregator.records.RoundRecord`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from aggregator.rounds import Phase

if TYPE_CHECKING:
    from aggregator.federation import Federation


class StatusView(BaseModel):
    """``GET /v1/status``."""

    model_config = ConfigDict(extra="ignore")
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


class ClientView(BaseModel):
    """One scenario in ``GET /v1/clients`` (only ``scenario`` and ``joined`` before it joins)."""

    model_config = ConfigDict(extra="ignore")
    scenario: str
    joined: bool
    live: bool | None = None
    session: str | None = Field(None, description="first 8 characters of the session id")
    joins: int | None = None
    joined_at: float | None = None
    last_seen_seconds_ago: float | None = None
    num_train_samples: int | None = None
    rounds: list[int] | None = None
    submitted_current_round: bool | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    final_fetched: bool | None = None


def status_view(fed: Federation) -> StatusView:
    with fed.lock:
        st = fed.status()
        now = fed.clock()
        deadline_in = None
        if st.deadline_unix is not None:
            deadline_in = round(max(0.0, st.deadline_unix - now), 3)
        return StatusView(
            phase=st.phase.value,
            round=st.round,
            completed_rounds=st.completed_rounds,
            total_rounds=st.total_rounds,
            deadline_unix=st.deadline_unix,
            deadline_in_seconds=deadline_in,
            min_clients=st.min_clients,
            scenarios=list(fed.scenarios),
            joined=st.joined,
            live=st.live,
            submitted=st.submitted,
            waiting_for=st.message,
            resumed_from_round=fed.resumed_from,
            method=fed.spec.method,
            preset=fed.spec.preset,
            seed=fed.spec.seed,
            spec_digest=fed.spec_digest,
            payload_bytes=sum(s.nbytes for s in fed.signature),
            state_checksum=fed.state_checksum(),
            strategy_checksum=fed.strategy_checksum,
        )


def client_views(fed: Federation) -> list[ClientView]:
    with fed.lock:
        now = fed.clock()
        m = fed.machine
        out = []
        for s in fed.scenarios:
            rec = m.clients.get(s)
            if rec is None:
                out.append(ClientView(scenario=s, joined=False))
                continue
            out.append(
                ClientView(
                    scenario=s,
                    joined=True,
                    live=m.is_live(s, now),
                    session=rec.session_id[:8],
                    joins=rec.joins,
                    joined_at=rec.joined_at,
                    last_seen_seconds_ago=round(now - rec.last_seen, 3),
                    num_train_samples=rec.num_train_samples,
                    rounds=list(rec.rounds),
                    submitted_current_round=s in m.submitted,
                    bytes_in=rec.bytes_in,
                    bytes_out=rec.bytes_out,
                    final_fetched=rec.final_fetched,
                )
            )
        return out


def is_finished(view: StatusView) -> bool:
    return view.phase == Phase.FINISHED.value
