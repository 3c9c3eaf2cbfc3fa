"""Gateway settings: command-line flags override ``MSMTREC_GATEWAY_*`` environment variables,
which override a ``--config`` file, which overrides the defaults below. The flags, their
help (default and variable name) and the documentation table all derive from this model
(servicekit.settings), as for the aggregator and the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.device import DEVICE_HELP, check_device
from servicekit.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MSMTREC_GATEWAY_", extra="forbid")
    section: ClassVar[str] = "gateway"

    registry: Path = Field(description="model registry root directory")
    host: str = Field("127.0.0.1", description="bind address (loopback unless deployed)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port")
    max_batch: int = Field(1000, ge=1, description="most instances per predict request")
    max_body_bytes: int | None = Field(
        None, ge=1024, description="largest request body; default 64 KiB + 8 KiB per instance"
    )
    poll_interval: float = Field(2.0, gt=0, description="seconds between LATEST pointer scans")
    threads: int = Field(
        1,
        ge=1,
        description="torch intra-op threads. 1 by default: small batches gain nothing from "
        "intra-op parallelism and concurrent requests already use the other core",
    )
    workers: int = Field(
        2,
        ge=0,
        description="inference threads that run parse + forward off the event loop; "
        "0 runs them on the event loop itself",
    )
    engine: Literal["compiled", "eager"] = Field(
        "compiled", description="compiled: template/BN/embedding folding; eager: the module"
    )
    device: str = Field(
        "cpu",
        description=f"where the engine runs: {DEVICE_HELP}. cpu by default: the compiled "
        "engine meets its latency targets on two cores; a GPU pays off for large batches",
    )
    spec: str | None = Field(
        None,
        description="dataset spec to serve: a built-in name (aliexpress, tenrec) or a "
        "TOML/YAML spec file (default: aliexpress); request keys are its feature names",
    )
    schema_file: Path | None = Field(
        None, description="JSON feature schema to serve (as a model's metadata records it)"
    )
    rate_limit_per_second: float = Field(
        0.0,
        ge=0,
        description="predict requests per second one client (remote address) may make over "
        "time, token bucket; beyond it 429 with Retry-After. 0 (default): off, since behind a "
        "proxy every request has the proxy's address",
    )
    rate_limit_burst: int = Field(
        50, ge=1, description="predict requests a client may make at once before the rate applies"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level of the gateway and uvicorn"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or (64 << 10) + self.max_batch * (8 << 10)

    @model_validator(mode="after")
    def _one_schema(self) -> GatewaySettings:
        if self.spec is not None and self.schema_file is not None:
            raise ValueError("give spec or schema_file, not both")
        return self

    def feature_schema(self) -> FeatureSchema:
        if self.spec is not None:
            from msmtrec.data.spec_file import load_spec

            return load_spec(self.spec)
        if self.schema_file is None:
            return ALIEXPRESS
        return FeatureSchema.from_dict(json.loads(self.schema_file.read_text()))
