"""The scenario client's loop: join, then for each open round download → train → submit.

The loop is driven by the aggregator's status, never by local assumptions, which is what
makes restarts of either side uneventful:

* a long-poll returns as soon as there is something to do for this scenario: an open round
  it has not submitted to, the end of the federation, or a lost registration (aggregator
  restarted) which is answered by joining again;
* a round's payload is evaluated (valid and test) right after it is loaded, i.e. the
  personalized model produced by the previous round, exactly where ``msmtrec simulate``
  evaluates; the result is reported to that round's record and published to the registry
  (the model evaluated is the method's: e.g. Ditto's personal model, fedavg-ft's fine-tuned
  copy — ``ClientRuntime.evaluated_model``);
* the last submission is kept until the aggregator has it, so if the aggregator restarts and
  reopens the round, the same bytes are sent again (the server treats a byte-identical
  replay as the same submission);
* the full local state is saved after every local round (and the final model at the end), so
  a restarted client resumes its embeddings, gates, W_T and BatchNorm statistics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from msmtrec import __version__
from msmtrec.codec import (
    Assembler,
    CodecError,
    Encoded,
    check_manifest,
    decode,
    encode,
    signature_of,
)
from msmtrec.data.dataset import ScenarioSplits
from msmtrec.device import device_name
from msmtrec.faults import fault_point
from msmtrec.federation.client import ClientRuntime
from msmtrec.spec import FederationSpec
from msmtrec.training.privacy import PrivacyBudgetExceeded
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.refusals import Reason
from scenario_client.connection import Backoff, ClientError, Connection, Refused
from scenario_client.settings import ClientSettings
from scenario_client.state import LocalState, StateMeta

log = logging.getLogger("scenario_client")


class DataError(ClientError):
    """The scenario's own data cannot be read; the message names file, row and column."""


# How the client meets each refusal reason it acts on (any other reason ends the run).
# Retrying cannot help: the client's model, spec or identity is not this federation's.
FATAL_REASONS = frozenset(
    {
        Reason.SPEC_MISMATCH,
        Reason.SIGNATURE_MISMATCH,
        Reason.UNKNOWN_SCENARIO,
        Reason.WRONG_SCENARIO,
    }
)
# A download for a round that is no longer (or not yet) open: the main loop polls again.
ROUND_MOVED_ON = frozenset(
    {Reason.WRONG_ROUND, Reason.NOT_OPEN, Reason.NOT_JOINED, Reason.FINISHED}
)
# A submission that arrived after its round closed (or for a round that did not sample
# this client): dropped, the next round goes on.
LATE_SUBMISSION = frozenset(
    {Reason.WRONG_ROUND, Reason.FINISHED, Reason.NOT_OPEN, Reason.NOT_SAMPLED}
)
# The aggregator forgot this client (it restarted): join again and resend the same bytes.
REJOIN = Reason.NOT_JOINED


@dataclass
class PendingSubmission:
    round: int
    encoded: Encoded
    num_samples: int
    metrics: dict[str, float]


@dataclass
class Download:
    header: pb.DownloadHeader
    params: dict[str, torch.Tensor]
    nbytes: int
    seconds: float


@dataclass
class ClientReport:
    """What a finished client did (returned by :meth:`ScenarioClient.run_federation`)."""

    rounds_trained: list[int] = field(default_factory=list)
    rounds_submitted: list[int] = field(default_factory=list)
    final_round: int = 0
    final_metrics: dict[str, Any] = field(default_factory=dict)
    publish_failures: list[int] = field(default_factory=list)  # rounds whose publish failed
    rounds_sat_out: list[int] = field(default_factory=list)  # rounds that did not sample it


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


class ScenarioClient:
    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.scenario = settings.scenario
        token = settings.bearer_token()
        if token is None and not settings.insecure:
            raise ClientError(
                "no token: give --token-file (or MSMTREC_CLIENT_TOKEN), or --insecure for an "
                "aggregator running with --insecure-dev"
            )
        self.conn = Connection(
            settings.aggregator,
            token,
            ca_cert=settings.ca_cert,
            client_cert=settings.client_cert,
            client_key=settings.client_key,
            tls_server_name=settings.tls_server_name,
            tls=settings.tls,
            rpc_timeout=settings.rpc_timeout_seconds,
            transfer_timeout=settings.transfer_timeout_seconds,
            reconnect_timeout=settings.reconnect_timeout_seconds,
            keepalive=settings.keepalive_seconds,
            backoff=Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds),
        )
        self.md = self.conn.metadata
        self.state = LocalState(settings.resolved_state_dir())
        self.session = ""
        self.pending: PendingSubmission | None = None
        self.report = ClientReport()
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # --------------------------------------------------------------------------- setup
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

        try:
            splits = load_scenario(
                self.settings.data, self.scenario, spec.schema, spec.valid_fraction
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

    # ------------------------------------------------------------------------ transfers
    def _download(self, round_number: int) -> Download:
        def attempt() -> Download:
            start = time.perf_counter()
            stream = self.conn.stub.Download(
                pb.DownloadRequest(scenario=self.scenario, round=round_number),
                timeout=self.conn.transfer_timeout,
                metadata=self.md,
            )
            header = None
            assembler = None
            specs: tuple = ()
            nbytes = 0
            try:
                for message in stream:
                    nbytes += message.ByteSize()
                    if message.WhichOneof("kind") == "header":
                        if header is not None:
                            raise ClientError("the aggregator sent two download headers")
                        header = message.header
                        specs = wire.specs_from_proto(header.manifest.tensors)
                        check_manifest(
                            specs,
                            self.signature,
                            declared_total=header.manifest.total_bytes,
                            max_bytes=self.max_payload,
                        )
                        assembler = Assembler(header.manifest.total_bytes)
                    elif assembler is None:
                        raise ClientError("the aggregator sent data before the header")
                    else:
                        assembler.feed(message.data)
                        fault_point("client.download_chunk", assembler.chunks - 1)
                if header is None or assembler is None:
                    raise ClientError("the aggregator sent an empty download")
                params = decode(specs, assembler.finish())
            except CodecError as exc:
                raise ClientError(f"the aggregator sent an invalid payload: {exc}") from exc
            return Download(header, params, nbytes, time.perf_counter() - start)

        return self.conn.call("Download", attempt)

    def _submit(self, pending: PendingSubmission) -> pb.SubmitResponse:
        def messages() -> Iterator[pb.SubmitChunk]:
            stream = wire.submit_stream(
                pending.encoded,
                self.chunk_bytes,
                scenario=self.scenario,
                round_number=pending.round,
                num_samples=pending.num_samples,
                metrics=pending.metrics,
            )
            for i, message in enumerate(stream):
                if i:
                    fault_point("client.upload_chunk", i - 1)
                yield message

        return self.conn.call(
            "Submit",
            lambda: self.conn.stub.Submit(
                messages(), timeout=self.conn.transfer_timeout, metadata=self.md
            ),
        )

    # --------------------------------------------------------------------------- rounds
    def _save(self) -> None:
        if self.runtime.privacy is not None:
            self.meta.privacy = self.runtime.privacy.state()
        self.state.save(self.runtime.full_state(), self.meta)

    def _evaluate_and_report(self, completed: int, timings: dict[str, float]) -> None:
        """Evaluate the personalized model ``completed`` rounds produced; report, save,
        publish."""
        start = time.perf_counter()
        evals = {"valid": self.runtime.evaluate("valid"), "test": self.runtime.evaluate("test")}
        timings = {**timings, "eval_seconds": time.perf_counter() - start}
        # Published before reporting, so that the round's record says if publishing failed.
        publish_error = ""
        if self.settings.registry is not None:
            publish_error = self._publish(completed, evals)
        try:
            self.conn.call(
                "ReportMetrics",
                lambda: self.conn.stub.ReportMetrics(
                    pb.ReportMetricsRequest(
                        scenario=self.scenario,
                        round=completed,
                        splits=wire.split_metrics_to_proto(evals),
                        timings=timings,
                        publish_error=publish_error,
                    ),
                    timeout=self.conn.rpc_timeout,
                    metadata=self.md,
                ),
            )
        except Refused as exc:
            if exc.reason in FATAL_REASONS or exc.code.name in ("UNAUTHENTICATED",):
                raise
            log.warning("%s: metrics of round %d not recorded: %s", self.scenario, completed, exc)
        # No save here: evaluation changes no tensor, and the next local round saves anyway
        # (a restarted client merely evaluates that round again). _finish saves.
        self.meta.evaluated_round = completed
        self.report.final_metrics = evals
        log.info(
            "%s: personalized model after round %d: valid AUC %s | test AUC %s",
            self.scenario, completed,
            " ".join(f"{t} {_fmt(m['auc'])}" for t, m in evals["valid"].items()),
            " ".join(f"{t} {_fmt(m['auc'])}" for t, m in evals["test"].items()),
        )  # fmt: skip

    def _publish(self, completed: int, evals: dict[str, Any]) -> str:
        """Publish the personalized model; returns "" or why it failed. A registry that
        refuses writes (a full disk, a read-only mount) costs this round's version only:
        the registry keeps serving the previous one (``LATEST`` moves only to a complete
        version), training goes on, and the next round's publish tries again."""
        try:
            from msmtrec.registry import ModelRegistry
        except ModuleNotFoundError as exc:
            raise ClientError(
                "--registry needs msmtrec.registry, which this installation lacks"
            ) from exc
        try:
            version = ModelRegistry(self.settings.registry).publish(
                self.scenario,
                self.runtime,
                round=completed,
                metrics=evals,
                extra={"preset": self.spec.preset, "method": self.spec.method},
                policy=self.settings.publish_policy,
            )
        except OSError as exc:
            self.report.publish_failures.append(completed)
            problem = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.error(
                "%s: could not publish the model of round %d to %s (%s); the registry keeps "
                "serving its previous version, training goes on and the next round tries "
                "again", self.scenario, completed, self.settings.registry, problem,
            )  # fmt: skip
            return problem
        log.info("%s: published %s to %s", self.scenario, version, self.settings.registry)
        return ""

    def _play_round(self, round_number: int) -> None:
        total = self.spec.rounds
        try:
            dl = self._download(round_number)
        except Refused as exc:
            if exc.reason in ROUND_MOVED_ON:
                log.info("%s: round %d moved on (%s)", self.scenario, round_number, exc.details)
                return
            raise
        if dl.header.final:
            return  # the federation finished meanwhile; the main loop fetches it properly
        completed = int(dl.header.completed_rounds)
        self.runtime.receive(dl.params, completed_rounds=completed)
        eval_seconds = 0.0
        if completed >= 1 and completed > self.meta.evaluated_round:
            start = time.perf_counter()
            self._evaluate_and_report(completed, {"download_seconds": dl.seconds})
            eval_seconds = time.perf_counter() - start
        fault_point("client.train", round_number)
        update, fit = self.runtime.train_round(round_number, progress=self.settings.progress)
        self.report.rounds_trained.append(round_number)
        self.meta.trained_round = round_number
        self._save()
        encoded = encode(update.params, self.runtime.sent_names)
        self.pending = PendingSubmission(
            round_number,
            encoded,
            update.num_samples,
            {
                # train_loss (not with DP), train_seconds, and dp_epsilon spent so far, …
                **{k: float(v) for k, v in self.runtime.round_metrics(fit).items()},
                "steps": float(fit.steps),
                "download_seconds": float(dl.seconds),
                "eval_seconds": eval_seconds,  # incl. reporting and publishing
            },
        )
        log.info(
            "%s: round %d/%d trained %d samples in %.2f s (loss %.4f); downloaded %.2f MB in "
            "%.2f s",
            self.scenario, round_number, total, fit.num_samples, fit.seconds, fit.loss,
            dl.nbytes / 1e6, dl.seconds,
        )  # fmt: skip
        if self.runtime.privacy is not None:
            log.info(
                "%s: round %d privacy: ε spent %.3f of budget %s (δ %.3g, %d private steps)",
                self.scenario, round_number, self.runtime.privacy.epsilon,
                self.runtime.privacy.config.epsilon, self.runtime.privacy.delta,
                self.runtime.privacy.accountant.steps,
            )  # fmt: skip
        self._send_pending()

    def _sit_out(self, round_number: int) -> None:
        """A round that did not sample this client (partial participation): download the
        model the previous rounds made, evaluate, report and publish it, as the simulation
        does for every client each round, but neither train nor submit."""
        try:
            dl = self._download(round_number)
        except Refused as exc:
            if exc.reason in ROUND_MOVED_ON:
                return
            raise
        if dl.header.final:
            return
        completed = int(dl.header.completed_rounds)
        self.runtime.receive(dl.params, completed_rounds=completed)
        if completed >= 1 and completed > self.meta.evaluated_round:
            self._evaluate_and_report(completed, {"download_seconds": dl.seconds})
        self.report.rounds_sat_out.append(round_number)
        log.info("%s: round %d did not sample this client; waiting", self.scenario, round_number)

    def _send_pending(self) -> None:
        pending = self.pending
        if pending is None:
            return
        start = time.perf_counter()
        try:
            response = self._submit(pending)
        except Refused as exc:
            if exc.reason in LATE_SUBMISSION:
                log.warning(
                    "%s: round %d closed before the submission arrived (late): %s",
                    self.scenario, pending.round, exc.details,
                )  # fmt: skip
                self.pending = None
                return
            if exc.reason is REJOIN:
                return  # the main loop joins again and resends the same bytes
            raise
        self.report.rounds_submitted.append(pending.round)
        log.info(
            "%s: round %d submitted %.2f MB in %.2f s%s; %s",
            self.scenario, pending.round, pending.encoded.total_bytes / 1e6,
            time.perf_counter() - start, " (replay: already had it)" if response.duplicate else "",
            response.status.message,
        )  # fmt: skip
        self.pending = None

    def _finish(self) -> None:
        dl = self._download(0)
        if not dl.header.final:
            return
        completed = int(dl.header.completed_rounds)
        self.runtime.receive(dl.params, completed_rounds=completed)
        self._evaluate_and_report(completed, {"download_seconds": dl.seconds})
        self._save()
        self.report.final_round = completed
        log.info("%s: federation finished after %d rounds", self.scenario, completed)

    # ----------------------------------------------------------------------------- main
    def run_federation(self) -> ClientReport:
        self._setup()
        status = self._join()
        self._heartbeat_thread = threading.Thread(
            target=self._heartbeat_loop, name="heartbeat", daemon=True
        )
        self._heartbeat_thread.start()
        after = 0
        while True:
            if not status.you_are_joined:
                status = self._join()
                continue
            if status.phase == pb.PHASE_FINISHED:
                self._finish()
                if self.report.final_round:
                    return self.report
            elif status.phase == pb.PHASE_OPEN and not status.you_submitted:
                r = int(status.round)
                if status.participants and self.scenario not in status.participants:
                    if r > after:  # not sampled: evaluate this round's model, train nothing
                        self.pending = None
                        self._sit_out(r)
                elif self.pending is not None and self.pending.round == r:
                    self._send_pending()
                else:
                    self.pending = None
                    self._play_round(r)
                after = r
            status = self._poll(after)

    def run(self) -> int:
        try:
            self.run_federation()
            return 0
        except Refused as exc:
            log.error("%s: the aggregator refused: %s", self.scenario, exc)
            return 1
        except DataError as exc:  # retrying cannot help: exit 2 like a settings error
            log.error("%s: %s", self.scenario, exc)
            return 2
        except PrivacyBudgetExceeded as exc:  # the client's own limit: it stops taking part
            log.error("%s: refusing to train: %s", self.scenario, exc)
            return 3
        except ClientError as exc:
            log.error("%s: %s", self.scenario, exc)
            return 1
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=2)
        self.conn.close()
