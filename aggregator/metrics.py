"""Prometheus metrics of one aggregator, in a registry of its own (no global state).

Counters and histograms are fed by the federation's hooks; gauges that describe the current
state (round, live clients) are read from the federation at scrape time, so they are never
stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from aggregator.federation import Federation
    from aggregator.records import RoundRecord

ROUND_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class FederationMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter("msmtrec_rounds_completed", "Completed rounds", registry=r)
        self.round_duration = Histogram(
            "msmtrec_round_duration_seconds", "Round wall time", buckets=ROUND_BUCKETS, registry=r
        )
        self.aggregation = Histogram(
            "msmtrec_aggregation_seconds", "Strategy.aggregate time per round", registry=r
        )
        self.bytes_received = Counter(
            "msmtrec_bytes_received", "Payload bytes received", ["scenario"], registry=r
        )
        self.bytes_sent = Counter(
            "msmtrec_bytes_sent", "Payload bytes sent", ["scenario"], registry=r
        )
        self.rejections = Counter(
            "msmtrec_requests_rejected",
            "Refused calls by RPC and reason (Submit refusals are rejected submissions)",
            ["rpc", "reason"],
            registry=r,
        )
        self.clients_connected = Gauge(
            "msmtrec_clients_connected", "Joined clients that are live", registry=r
        )
        self.dp_epsilon = Gauge(
            "msmtrec_client_dp_epsilon",
            "Differential privacy: ε a client has spent so far, as its last submission reports",
            ["scenario"],
            registry=r,
        )
        self.current_round = Gauge("msmtrec_current_round", "Open round number", registry=r)
        self.completed_rounds = Gauge(
            "msmtrec_completed_rounds", "Rounds completed (including before a restart)", registry=r
        )

    def bind(self, federation: Federation) -> None:
        self.clients_connected.set_function(federation.live_count)
        self.current_round.set_function(lambda: federation.status().round)
        self.completed_rounds.set_function(lambda: federation.status().completed_rounds)

    # hooks called by the federation and the servicer (aggregator.hooks.Hooks)
    def rejected(self, rpc: str, reason: str) -> None:
        self.rejections.labels(rpc, reason).inc()

    def bytes_in(self, scenario: str, n: int) -> None:
        self.bytes_received.labels(scenario).inc(n)

    def bytes_out(self, scenario: str, n: int) -> None:
        self.bytes_sent.labels(scenario).inc(n)

    def round_closed(self, record: RoundRecord) -> None:
        self.rounds.inc()
        self.round_duration.observe(record.duration_seconds)
        self.aggregation.observe(record.aggregation_seconds)
        for scenario, eps in record.dp_epsilon.items():
            self.dp_epsilon.labels(scenario).set(eps)

    def evaluation_reported(self, round_number: int, scenario: str, evals: dict) -> None:
        pass  # evaluations are in /v1/rounds, not in Prometheus

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
