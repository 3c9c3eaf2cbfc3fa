"""Every knob of ``msmtrec client``: one model, read from flags, env and a config file.

The experiment protocol (model preset, method, seed, local training settings, validation
hold-out) is not here: the aggregator hands it out, so every scenario trains the way the
federation (and ``msmtrec simulate``) does. Differential privacy is: the ``dp_*`` fields of
:class:`msmtrec.experiment.PrivacySettings`, the same model ``simulate`` and ``up`` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from msmtrec.device import DEVICE_HELP, PRECISION_HELP, check_device
from msmtrec.experiment import PrivacySettings, dataset_schema
from servicekit.settings import NO_CLI, ServiceSettings


class ClientSettings(ServiceSettings, PrivacySettings):
    model_config = SettingsConfigDict(env_prefix="MSMTREC_CLIENT_", extra="forbid")
    section = "client"

    scenario: str = Field(description="this client's scenario (its token must match)")
    data: Path = Field(description="data directory; only <data>/<scenario>/ is read")
    aggregator: str = Field("127.0.0.1:50051", description="aggregator HOST:PORT")
    dataset: str | None = Field(
        None,
        description="dataset spec this client's data follows: a built-in name or a TOML/YAML "
        "file; sent on join, and the aggregator refuses a spec that differs from the "
        "federation's (default: the federation's spec)",
        json_schema_extra={"flag": "--spec", "metavar": "NAME|PATH"},
    )

    token_file: Path | None = Field(None, description="file holding this scenario's token")
    token: SecretStr | None = Field(
        None, description="the token itself (env/config only, never a flag)",
        json_schema_extra=NO_CLI,
    )  # fmt: skip
    insecure: bool = Field(
        False, description="send no token (only for an aggregator run with --insecure-dev)"
    )
    tls: bool = Field(False, description="use TLS with the system's trusted CAs")
    ca_cert: Path | None = Field(None, description="CA certificate (PEM); enables TLS")
    client_cert: Path | None = Field(None, description="client certificate for mutual TLS")
    client_key: Path | None = Field(None, description="client private key for mutual TLS")
    tls_server_name: str | None = Field(
        None, description="name to verify the server certificate against (default: host)"
    )

    state_dir: Path | None = Field(
        None, description="local state, resumed on restart (default runs/client/<scenario>)"
    )
    registry: Path | None = Field(
        None, description="model registry directory to publish to after every round"
    )
    publish_policy: Literal["latest", "best-valid"] = Field(
        "latest",
        description="latest: serve every new round; best-valid: move LATEST only when the "
        "mean validation AUC is at least the served version's",
    )

    rpc_timeout_seconds: float = Field(30.0, description="deadline of each unary call")
    transfer_timeout_seconds: float = Field(
        600.0, description="deadline of each parameter download or upload"
    )
    poll_seconds: float = Field(20.0, description="how long one status long-poll may wait")
    reconnect_timeout_seconds: float = Field(
        300.0, description="give up when the aggregator stays unreachable this long"
    )
    keepalive_seconds: float = Field(
        10.0,
        description="HTTP/2 keepalive ping interval; a connection that answers no ping within "
        "half of it (at least 1 s) is dropped and the call retried, so a stalled or "
        "blackholed network never holds a call until its deadline",
    )
    backoff_initial_seconds: float = Field(0.5, description="first retry delay")
    backoff_max_seconds: float = Field(10.0, description="largest retry delay (with jitter)")

    # Record-level differential privacy of this scenario's training (docs/PRIVACY.md), the
    # dp_* fields of msmtrec.experiment.PrivacySettings (inherited): the client's own
    # choice, since it protects the client's own rows.

    # One client as the replicas of a torchrun job (scenario_client/distributed.py).
    distributed: bool = Field(
        False,
        description="train as the replicas of a torchrun job (RANK, WORLD_SIZE, MASTER_ADDR, "
        "MASTER_PORT from torchrun; CPU, gloo): rank 0 talks to the aggregator, every rank "
        "trains its share of each batch",
    )
    replica_timeout_seconds: float = Field(
        300.0,
        description="with --distributed: deadline of every exchange between the replicas "
        "(a replica that hangs longer fails the client); must cover loading the data",
    )

    stream_buffer_rows: int = Field(
        0,
        ge=0,
        description="> 0: stream the train split from Parquet through a shuffle buffer of "
        "this many rows, so memory does not grow with the rows (msmtrec.data.stream; another "
        "row order than in memory); 0: load it in memory",
    )
    threads: int | None = Field(None, description="torch intra-op threads")
    device: str = Field("auto", description=f"where the model trains: {DEVICE_HELP}")
    precision: Literal["fp32", "bf16"] = Field("fp32", description=PRECISION_HELP)
    progress: bool = Field(False, description="progress bar during local training")
    log_level: str = Field("INFO", description="logging level")

    @field_validator(
        "rpc_timeout_seconds", "transfer_timeout_seconds", "poll_seconds",
        "reconnect_timeout_seconds", "backoff_initial_seconds", "backoff_max_seconds",
        "keepalive_seconds", "replica_timeout_seconds",
    )  # fmt: skip
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        if v is not None:
            dataset_schema(v)  # a spec that does not load: an error naming file and key
        return v

    @model_validator(mode="after")
    def _privacy_valid(self) -> ClientSettings:
        # a bad combination is an error naming the setting, at start-up
        if self.privacy() is not None and self.precision != "fp32":
            raise ValueError(
                f"precision {self.precision!r} with differential privacy (dp_epsilon / "
                "dp_noise_multiplier): private training runs in fp32 only; set precision fp32"
            )
        if self.stream_buffer_rows > 0 and self.privacy() is not None:
            raise ValueError(
                "stream_buffer_rows with differential privacy: DP-SGD samples rows by Poisson "
                "sampling over the whole split, which a stream cannot; set stream_buffer_rows 0"
            )
        if self.stream_buffer_rows > 0 and self.distributed:
            raise ValueError(
                "stream_buffer_rows with distributed: the replicas shard an in-memory split; "
                "set stream_buffer_rows 0"
            )
        return self

    def resolved_state_dir(self) -> Path:
        return self.state_dir or Path("runs/client") / self.scenario

    def bearer_token(self) -> str | None:
        if self.insecure:
            return None
        if self.token is not None:
            return self.token.get_secret_value().strip()
        if self.token_file is not None:
            return Path(self.token_file).read_text().strip()
        return None
