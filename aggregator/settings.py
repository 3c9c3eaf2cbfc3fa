"""Every knob of ``msmtrec aggregator``: one model, read from flags, env and a config file.

Defaults favour a safe local run: bind to loopback, refuse to start without tokens unless
``insecure_dev``, checkpoint after every round. docs/FEDERATION.md holds the generated table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from msmtrec.experiment import ProtocolSettings
from msmtrec.federation.methods import check_networked
from servicekit.settings import NO_CLI, ServiceSettings

MiB = 1 << 20


class AggregatorSettings(ServiceSettings, ProtocolSettings):
    model_config = SettingsConfigDict(env_prefix="MSMTREC_AGGREGATOR_", extra="forbid")
    section = "aggregator"

    # ------------------------------------------------------------------------- network
    host: str = Field("127.0.0.1", description="gRPC bind address (0.0.0.0 in containers)")
    port: int = Field(50051, description="gRPC port")
    status_host: str = Field("127.0.0.1", description="REST status API bind address")
    status_port: int = Field(8081, description="REST status API port (0: disabled)")
    max_workers: int = Field(32, description="gRPC worker threads (long polls hold one each)")
    max_calls_per_scenario: int = Field(
        8,
        ge=1,
        description="calls one scenario may have in flight (a client needs 2-3): a stolen or "
        "buggy client cannot hold every worker thread",
    )
    max_submits_per_scenario: int = Field(
        2,
        ge=1,
        description="concurrent uploads of one scenario (each holds a payload-sized buffer)",
    )
    rate_limit_per_second: float = Field(
        50.0,
        ge=0,
        description="calls per second one token may make over time (token bucket; beyond it "
        "RESOURCE_EXHAUSTED rate-limited with retry-after-ms, which clients honour); 0: off",
    )
    rate_limit_burst: int = Field(
        100, ge=1, description="calls one token may make at once before the rate applies"
    )

    # The experiment protocol (method and its knobs, preset, seed, rounds, local training,
    # validation hold-out, participation) is msmtrec.experiment.ProtocolSettings, inherited:
    # the same fields as `simulate` and `up`, and the same mapping to the served spec.

    # ----------------------------------------------------------------------- rounds
    scenarios: list[str] | None = Field(
        None, description="scenarios of the federation (default: the token table's)"
    )
    min_clients: int = Field(2, description="submissions a round needs to close at its deadline")
    start_wait_seconds: float = Field(
        30.0,
        description="once min_clients joined, how long round 1 waits for the other scenarios",
    )
    round_deadline_seconds: float = Field(
        600.0,
        description="a round closes when every live client submitted, or at this deadline "
        "with at least min_clients submissions (else it is extended and says why)",
    )
    heartbeat_interval_seconds: float = Field(5.0, description="client heartbeat interval")
    heartbeat_patience: int = Field(
        3, description="missed heartbeats before a client counts as lost (not waited for)"
    )
    max_poll_seconds: float = Field(30.0, description="longest a status long-poll is held")

    # ----------------------------------------------------------------------- limits
    chunk_bytes: int = Field(MiB, description="bytes per streamed chunk")
    max_payload_bytes: int = Field(
        512 * MiB, description="largest payload a submission may declare"
    )

    # ---------------------------------------------------------------------- storage
    state_dir: Path = Field(
        Path("runs/aggregator"), description="checkpoints and round history (resumed on start)"
    )
    keep_checkpoints: int = Field(3, description="checkpoints kept (older ones are pruned)")
    history_rounds: int = Field(
        1000,
        ge=1,
        description="round records kept in history.json and /v1/rounds (older ones are "
        "dropped): bounds the state directory; a checkpoint carries only the last few",
    )
    checkpoint_attempts: int = Field(
        3,
        ge=1,
        description="tries to write a round's checkpoint (e.g. on a full disk) before the "
        "process exits 3; meanwhile /v1/status says why (storage_problem)",
    )
    checkpoint_retry_seconds: float = Field(
        1.0, ge=0, description="pause between two tries of a checkpoint write"
    )
    spill_dir: Path | None = Field(
        None,
        description="keep received submissions and the per-client server state (personalized "
        "experts, last deltas) in memory-mapped scratch files here instead of RAM: for many "
        "clients at a large preset (unset: RAM; same results either way)",
    )
    tensorboard: Path | None = Field(
        None,
        description="directory for TensorBoard event files: per round AUC per scenario × task, "
        "loss, bytes, personalization weights (unset: none written)",
    )

    # --------------------------------------------------------------------- security
    tokens_file: Path | None = Field(None, description="YAML/JSON mapping scenario → bearer token")
    tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="scenario → token as JSON (env/config only, never a flag)",
        json_schema_extra=NO_CLI,
    )
    insecure_dev: bool = Field(
        False, description="allow running without tokens (development only; logs a warning)"
    )
    tls_cert: Path | None = Field(None, description="server certificate (PEM); enables TLS")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    tls_client_ca: Path | None = Field(
        None, description="CA for client certificates; enables mutual TLS (required certs)"
    )
    tls_client_identity: Literal["scenario", "any"] = Field(
        "scenario",
        description="with mutual TLS: 'scenario' = a client certificate's common name or a DNS "
        "name in its SAN must be the scenario it acts as (as make-dev-certs issues them); "
        "'any' = any certificate of the CA will do (the token alone binds the scenario)",
    )

    # ------------------------------------------------------------------------ misc
    exit_when_done: bool = Field(
        False,
        description="exit once finished and every live client reported its final metrics "
        "(default: keep serving status until stopped)",
    )
    shutdown_grace_seconds: float = Field(5.0, description="grace for in-flight calls on stop")
    threads: int | None = Field(None, description="torch intra-op threads for aggregation")
    log_level: str = Field("INFO", description="logging level")

    @field_validator("method")
    @classmethod
    def _networked_method(cls, v: str) -> str:  # ProtocolSettings checks that it exists
        check_networked(v)  # unknown or central: a ValueError that names the choices
        return v

    @field_validator("min_clients", "chunk_bytes", "heartbeat_patience")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("round_deadline_seconds", "heartbeat_interval_seconds", "max_poll_seconds")
    @classmethod
    def _positive_seconds(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v
