"""The client's session with the aggregator: fetch the federation's spec, build this
scenario's runtime from it (its data, its model, resumed local state), join, keep the
registration alive with heartbeats, and long-poll for the next thing to do. A part of
:class:`~scenario_client.runner.ScenarioClient` (a mixin)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence

from msmtrec import __version__
from msmtrec.codec import TensorSpec, signature_of
from msmtrec.data.dataset import ScenarioSplits
from msmtrec.device import device_name
from msmtrec.experiment import dataset_schema
from msmtrec.federation.client import ClientRuntime
from msmtrec.spec import FederationSpec
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from scenario_client.connection import ClientError, Connection
from scenario_client.settings import ClientSettings
from scenario_client.state import LocalState, StateMeta

log = logging.getLogger("scenario_client")


class DataError(ClientError):
    """The scenario's own data cannot be read; the message names file, row and column."""


class Session:
    """Spec, runtime, join and heartbeats (see :class:`~scenario_client.runner.ScenarioClient`)."""

    # state of the ScenarioClient this part works on (set by ScenarioClient.__init__)
    settings: ClientSettings
    scenario: str
    conn: Connection
    md: Sequence[tuple[str, str]]
    state: LocalState
    session: str
    _stop: threading.Event
    spec: FederationSpec
    spec_digest: str
    runtime: ClientRuntime
    signature: Sequence[TensorSpec]
    meta: StateMeta
    heartbeat_interval: float

    def _setup(self) -> None:
        cfg = self.conn.call(
            "GetConfig",
            lambda: self.conn.stub.GetConfig(
                pb.GetConfigRequest(scenario=self.scenario),
                timeout=self.conn.rpc_timeout,
                metadata=self.md,
            ),
        )
        if cfg.protocol != wire.PROTOCOL:
            raise ClientError(f"aggregator speaks {cfg.protocol!r}, this client {wire.PROTOCOL}")
        spec = FederationSpec.from_json(cfg.spec_json)
        if spec.digest() != cfg.spec_digest:
            raise ClientError(
                "the federation spec digest differs from the aggregator's: the client and "
                "aggregator run different msmtrec versions"
            )
        self.spec = spec
        self.spec_digest = cfg.spec_digest
        self.chunk_bytes = int(cfg.chunk_bytes) or (1 << 20)
        self.max_payload = int(cfg.max_payload_bytes)
        self.heartbeat_interval = max(0.2, cfg.heartbeat_interval_ms / 1000.0)
        from msmtrec.data.loader import DataValidationError, load_scenario

        # the client's own dataset spec (--spec) reads its data; the aggregator compares it
        # with the federation's on join (default: the federation's own)
        self.dataset_schema = (
            dataset_schema(self.settings.dataset) if self.settings.dataset else spec.schema
        )
        try:
            if self.settings.stream_buffer_rows > 0:
                from msmtrec.data.stream import stream_splits

                splits = stream_splits(
                    self.settings.data, self.scenario, self.dataset_schema,
                    spec.valid_fraction, self.settings.stream_buffer_rows,
                )  # fmt: skip
                log.info(
                    "%s: streaming the train split from Parquet (shuffle buffer %d rows)",
                    self.scenario, self.settings.stream_buffer_rows,
                )  # fmt: skip
            else:
                splits = load_scenario(
                    self.settings.data, self.scenario, self.dataset_schema, spec.valid_fraction
                )
        except (DataValidationError, FileNotFoundError) as exc:
            raise DataError(f"cannot load this scenario's data: {exc}") from None
        self.runtime = self._make_runtime(splits, spec)
        self.signature = signature_of(self.runtime.shared_state(), self.runtime.sent_names)
        # (No optimizer warm-up: the Trainer's fused Adam does not import torch._dynamo.)
        self.meta = StateMeta(self.scenario, self.spec_digest)
        restored = self.state.load(self.scenario, self.spec_digest)
        if restored is not None:
            tensors, meta = restored
            self.runtime.load_full_state(tensors)
            self.meta = meta
            if self.runtime.privacy is not None:
                self.runtime.privacy.load_state(meta.privacy)
            log.info(
                "%s: resumed local state from %s (trained round %d, evaluated round %d)",
                self.scenario, self.state.path, meta.trained_round, meta.evaluated_round,
            )  # fmt: skip
        log.info(
            "%s: %d train / %d valid / %d test rows; method %s, preset %s, %d rounds; "
            "shared parameters %.2f MB; training on %s in %s",
            self.scenario, len(splits.train), len(splits.valid), len(splits.test), spec.method,
            spec.preset, spec.rounds, sum(s.nbytes for s in self.signature) / 1e6,
            device_name(self.runtime.device), self.settings.precision,
        )  # fmt: skip
        if self.runtime.privacy is not None:
            p = self.runtime.privacy.summary()
            log.info(
                "%s: differential privacy on: budget ε %s, δ %.3g over %d planned private "
                "steps (%d rounds); noise multiplier %.4g, clip %g, sample rate %.4g; "
                "ε spent so far %.3f",
                self.scenario, p["epsilon_budget"] or "unset (fixed noise)", p["delta"],
                p["planned_steps"], spec.rounds, p["noise_multiplier"], p["max_grad_norm"],
                p["sample_rate"], p["epsilon"],
            )  # fmt: skip

    def _make_runtime(self, splits: ScenarioSplits, spec: FederationSpec) -> ClientRuntime:
        """The scenario's runtime (a distributed client's rank 0 builds one whose training
        spreads over its replicas: scenario_client.distributed)."""
        return ClientRuntime(
            self.scenario, splits, spec.model_config(), spec.federation(), spec.train, spec.seed,
            privacy=self.settings.privacy(), planned_rounds=spec.rounds,
            device=self.settings.device, precision=self.settings.precision,
        )  # fmt: skip

    def _join(self) -> pb.RoundStatus:
        response = self.conn.call(
            "Join",
            lambda: self.conn.stub.Join(
                pb.JoinRequest(
                    scenario=self.scenario,
                    spec_digest=self.spec_digest,
                    signature=wire.specs_to_proto(self.signature),
                    num_train_samples=len(self.runtime.splits.train),
                    client_version=f"msmtrec/{__version__}",
                    dataset_spec_json=json.dumps(self.dataset_schema.to_dict(), sort_keys=True),
                ),
                timeout=self.conn.rpc_timeout,
                metadata=self.md,
            ),
        )
        self.session = response.session_id
        log.info("%s: joined (%s)", self.scenario, response.status.message)
        return response.status

    # ----------------------------------------------------------------------- heartbeats
    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self.conn.stub.Heartbeat(
                    pb.HeartbeatRequest(scenario=self.scenario, session_id=self.session),
                    timeout=min(self.conn.rpc_timeout, 10.0),
                    metadata=self.md,
                )
            except Exception as exc:  # the main loop deals with an absent aggregator
                log.debug("heartbeat failed: %s", exc)

    def _poll(self, after_round: int) -> pb.RoundStatus:
        wait = self.settings.poll_seconds
        return self.conn.call(
            "Heartbeat",
            lambda: self.conn.stub.Heartbeat(
                pb.HeartbeatRequest(
                    scenario=self.scenario,
                    session_id=self.session,
                    wait_ms=int(wait * 1000),
                    after_round=after_round,
                ),
                timeout=wait + self.conn.rpc_timeout,
                metadata=self.md,
            ),
        )
