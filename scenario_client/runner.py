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
from dataclasses import dataclass, field
from typing import Any

from msmtrec.codec import encode
from msmtrec.faults import fault_point
from msmtrec.training.privacy import PrivacyBudgetExceeded
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.refusals import Reason
from scenario_client.connection import Backoff, ClientError, Connection, Refused
from scenario_client.evaluation import FATAL_REASONS, Evaluation
from scenario_client.session import DataError, Session
from scenario_client.settings import ClientSettings
from scenario_client.state import LocalState
from scenario_client.transfers import PendingSubmission, Transfers

__all__ = [
    "FATAL_REASONS",
    "LATE_SUBMISSION",
    "REJOIN",
    "ROUND_MOVED_ON",
    "ClientReport",
    "DataError",
    "ScenarioClient",
]

log = logging.getLogger("scenario_client")


# How the client meets each refusal reason it acts on (any other reason ends the run).
# FATAL_REASONS (retrying cannot help) is next to the reporting that also meets it.
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
class ClientReport:
    """What a finished client did (returned by :meth:`ScenarioClient.run_federation`)."""

    rounds_trained: list[int] = field(default_factory=list)
    rounds_submitted: list[int] = field(default_factory=list)
    final_round: int = 0
    final_metrics: dict[str, Any] = field(default_factory=dict)
    publish_failures: list[int] = field(default_factory=list)  # rounds whose publish failed
    rounds_sat_out: list[int] = field(default_factory=list)  # rounds that did not sample it


class ScenarioClient(Session, Transfers, Evaluation):
    """One scenario's client: the round loop (this module) over its parts, the session
    (``session``), the transfers (``transfers``) and the evaluation (``evaluation``)."""

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

    # --------------------------------------------------------------------------- rounds
    def _save(self) -> None:
        if self.runtime.privacy is not None:
            self.meta.privacy = self.runtime.privacy.state()
        self.state.save(self.runtime.full_state(), self.meta)

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
        """Stop heartbeats and close the channel, then wait for the heartbeat thread.

        The channel is closed first: that cancels a heartbeat still in flight (the
        aggregator may be slow to answer while it aggregates for many clients), so the
        thread ends at once. Leaving it inside a gRPC call at interpreter exit aborted the
        process (``terminate called without an active exception``, exit -6), seen once in
        64 client processes (tests/faults/test_many_clients.py)."""
        self._stop.set()
        self.conn.close()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=self.conn.rpc_timeout)
            if self._heartbeat_thread.is_alive():
                log.warning("%s: the heartbeat thread did not stop", self.scenario)
