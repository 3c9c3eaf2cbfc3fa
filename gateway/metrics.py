"""Prometheus metrics of one gateway app (its own ``CollectorRegistry``, so several apps in one
process — tests — never collide). Label values are bounded: scenario labels only ever take
names that exist in the model registry (an unknown scenario is counted as ``unknown``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond resolution where the latency targets live (≤ 10 ms / ≤ 30 ms).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
UNKNOWN = "unknown"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "msmtrec_gateway_request_seconds",
            "Predict request latency inside the app (parse, forward, encode), by outcome.",
            ["scenario", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "msmtrec_gateway_batch_size",
            "Instances per accepted predict request.",
            ["scenario"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "msmtrec_gateway_errors_total",
            "Predict requests that failed, by reason (validation, unknown_scenario, "
            "not_loaded, rate_limited, internal).",
            ["scenario", "reason"],
            registry=r,
        )
        self.oov = Counter(
            "msmtrec_gateway_oov_ids_total",
            "Categorical ids at or above the vocabulary size, mapped to the OOV slot.",
            ["scenario", "field"],
            registry=r,
        )
        self.instances = Counter(
            "msmtrec_gateway_instances_total",
            "Instances scored.",
            ["scenario"],
            registry=r,
        )
        self.model_info = Gauge(
            "msmtrec_gateway_model_info",
            "1 for the version each scenario serves.",
            ["scenario", "version"],
            registry=r,
        )
        self.model_round = Gauge(
            "msmtrec_gateway_model_round",
            "Federation round of the served version.",
            ["scenario"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "msmtrec_gateway_model_loaded_timestamp_seconds",
            "When the served version was swapped in.",
            ["scenario"],
            registry=r,
        )
        self.reloads = Counter(
            "msmtrec_gateway_reloads_total",
            "Version loads by outcome (success, failure).",
            ["scenario", "outcome"],
            registry=r,
        )

    def served(self, scenario: str, old: str | None, new: str, round_: int, when: float) -> None:
        if old is not None:
            self.model_info.remove(scenario, old)
        self.model_info.labels(scenario, new).set(1)
        self.model_round.labels(scenario).set(round_)
        self.model_loaded.labels(scenario).set(when)
        self.reloads.labels(scenario, "success").inc()
