"""The client's evaluation of each personalized model it receives: valid and test metrics,
published to the model registry (a failed publish costs that round's version only) and
reported to the round's record on the aggregator. A part of
:class:`~scenario_client.runner.ScenarioClient` (a mixin)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msmtrec.federation.client import ClientRuntime
from msmtrec.spec import FederationSpec
from msmtrec_proto import wire
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.refusals import Reason
from scenario_client.connection import ClientError, Connection, Refused
from scenario_client.settings import ClientSettings
from scenario_client.state import StateMeta

if TYPE_CHECKING:
    from scenario_client.runner import ClientReport

log = logging.getLogger("scenario_client")

# Retrying cannot help: the client's model, spec or identity is not this federation's.
FATAL_REASONS = frozenset(
    {
        Reason.SPEC_MISMATCH,
        Reason.DATASET_SPEC_MISMATCH,
        Reason.SIGNATURE_MISMATCH,
        Reason.UNKNOWN_SCENARIO,
        Reason.WRONG_SCENARIO,
    }
)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


class Evaluation:
    """Evaluate, publish, report (see :class:`~scenario_client.runner.ScenarioClient`)."""

    # state of the ScenarioClient this part works on (set by ScenarioClient.__init__)
    settings: ClientSettings
    scenario: str
    conn: Connection
    md: Sequence[tuple[str, str]]
    spec: FederationSpec
    runtime: ClientRuntime
    meta: StateMeta
    report: ClientReport

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
