"""``msmtrec client --distributed``: one scenario's client as the replicas of a torchrun job.

Rank 0 (the *leader*) is the ordinary client — it alone talks to the aggregator, keeps the
local state and publishes — with a :class:`LeaderRuntime` that mirrors every operation that
trains or changes state to the other ranks (the *followers*) before running it itself:

======== =========================================== ==========================================
command  leader                                      followers
======== =========================================== ==========================================
SETUP    sends the federation spec (JSON)            load the scenario, build the same runtime;
                                                     all ranks compare their data's fingerprint
SYNC     sends its full local state (a resume)       load it
RECEIVE  sends the round's shared parameters         ``receive`` them (anchor, method hooks)
TRAIN    trains its shard of round r                 train theirs (DDP); then all ranks compare
                                                     a checksum of their state, rank 0's is
                                                     re-sent if one differs
EVALUATE evaluates (a method may fine-tune here)     the same, results dropped
NOOP     every few seconds while idle                nothing: proves the leader is alive
STOP     the client's exit code, when it ends        exit with it
======== =========================================== ==========================================

Every command is a broadcast of three integers, and everything else crosses as tensors
(:class:`~msmtrec.training.process_group.ReplicaGroup`); nothing is pickled. Every collective
has the group's timeout (``--replica-timeout-seconds``), so nothing waits forever: a
follower whose leader hung raises after it, a replica that died closes its sockets and the
others fail at once, and the STOP command tells the followers how the federation ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from msmtrec.data.dataset import ScenarioSplits
from msmtrec.experiment import dataset_schema
from msmtrec.federation.client import ClientRuntime
from msmtrec.spec import FederationSpec
from msmtrec.training.distributed import DistributedTrainer
from msmtrec.training.process_group import (
    ReplicaGroup,
    ReplicaGroupError,
    close_replicas,
    init_replicas,
    replica_env,
)
from scenario_client.connection import ClientError
from scenario_client.settings import ClientSettings

log = logging.getLogger("scenario_client.distributed")

NOOP, SETUP, SYNC, RECEIVE, TRAIN, EVALUATE, STOP = range(7)
SPLITS = ("valid", "test", "train")


class ReplicaError(ClientError):
    """The replicas of this client disagree or lost each other (exit 1, or 2 for data)."""


# ----------------------------------------------------------------------------- checks
def data_fingerprint(splits: ScenarioSplits | None) -> torch.Tensor:
    """Row counts and checksums of the three splits; all -1 when the data did not load."""
    if splits is None:
        return torch.full((6,), -1, dtype=torch.int64)
    values = []
    for data in (splits.train, splits.valid, splits.test):
        crc = 0
        for array in (data.categorical, data.numerical, data.labels):
            crc = zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"), crc)
        values += [len(data), crc]
    return torch.tensor(values, dtype=torch.int64)


def check_same_data(group: ReplicaGroup, splits: ScenarioSplits | None, scenario: str) -> None:
    """Every replica must train on the same scenario files (each replica reads its own
    copy: a mount of the same directory)."""
    seen = group.all_gather(data_fingerprint(splits), "the data check")
    failed = [r for r in range(group.world_size) if int(seen[r][0]) < 0]
    if failed:
        raise ReplicaError(f"scenario {scenario}: rank(s) {failed} could not load the data")
    differ = [r for r in range(group.world_size) if not torch.equal(seen[r], seen[0])]
    if differ:
        rows = {r: [int(seen[r][i]) for i in (0, 2, 4)] for r in [0, *differ]}
        raise ReplicaError(
            f"scenario {scenario}: rank(s) {differ} loaded other data than rank 0 "
            f"(train/valid/test rows per rank: {rows}); mount the same <data>/{scenario}/ "
            "on every replica"
        )


def state_checksum(runtime: ClientRuntime) -> int:
    """CRC32 of the full local state's bytes (names in order): equal states, equal sums,
    whatever the CPU (no float reduction involved)."""
    crc = 0
    for name, t in sorted(runtime.full_state().items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(memoryview(t.contiguous().numpy()).cast("B"), crc)
    return crc


def agree_on_state(group: ReplicaGroup, runtime: ClientRuntime, when: str) -> bool:
    """All ranks compare their state's checksum; if any differs from rank 0's, rank 0's
    state is sent to everyone (identical updates should keep them equal, but replicas on
    different CPUs may round differently). Returns whether a re-send was needed."""
    sums = group.all_gather(torch.tensor([state_checksum(runtime)]), f"state check {when}")
    drifted = [r for r in range(group.world_size) if int(sums[r]) != int(sums[0])]
    if not drifted:
        return False
    state = group.broadcast_state(runtime.full_state(), f"state re-send {when}")
    if not group.is_leader:
        runtime.load_full_state(state)
    else:
        log.warning("replica state of rank(s) %s drifted %s; re-sent rank 0's", drifted, when)
    return True


# ---------------------------------------------------------------------------- leader
class Commands:
    """The leader's side of the command channel: one lock around every collective the
    leader issues, and a keep-alive thread that sends NOOP whenever the channel has been
    quiet for ``interval`` seconds (while the leader waits on the aggregator)."""

    def __init__(self, group: ReplicaGroup, interval: float) -> None:
        self.group = group
        self.interval = interval
        self.lock = threading.Lock()
        self.failure: ReplicaGroupError | None = None
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keepalive, name="replicas", daemon=True)
        self._thread.start()

    def _send(self, op: int, arg: int = 0) -> None:
        self.group.broadcast_(torch.tensor([op, arg, 0], dtype=torch.int64), "a command")
        self._last = time.monotonic()

    def _keepalive(self) -> None:
        while not self._stopped.wait(self.interval / 4):
            with self.lock:
                if self._stopped.is_set() or self.failure is not None:
                    return
                if time.monotonic() - self._last < self.interval:
                    continue
                try:
                    self._send(NOOP)
                except ReplicaGroupError as exc:
                    self.failure = exc
                    log.error("the replicas stopped answering: %s", exc)
                    return

    @contextlib.contextmanager
    def command(self, op: int, arg: int = 0) -> Iterator[None]:
        """Send ``op`` and keep the channel to this operation until the block ends (its
        own collectives, e.g. DDP's, must not interleave with a keep-alive)."""
        with self.lock:
            if self.failure is not None:
                raise ReplicaError(str(self.failure))
            try:
                self._send(op, arg)
                yield
            except ReplicaGroupError as exc:
                self.failure = exc
                raise ReplicaError(str(exc)) from exc
            finally:
                self._last = time.monotonic()

    def stop(self, code: int) -> None:
        """Tell the followers the client ended with ``code`` (best effort: a follower that
        already failed is gone)."""
        self._stopped.set()
        with self.lock:
            if self.failure is None:
                try:
                    self._send(STOP, code)
                except ReplicaGroupError as exc:
                    log.warning("could not tell the replicas to stop: %s", exc)
        self._thread.join(timeout=5)


class LeaderRuntime(ClientRuntime):
    """Rank 0's runtime: each state-changing operation is first sent to the followers."""

    commands: Commands

    def _group(self) -> ReplicaGroup:
        return self.commands.group

    def receive(
        self, payload: Mapping[str, torch.Tensor], completed_rounds: int | None = None
    ) -> None:
        arg = -1 if completed_rounds is None else int(completed_rounds)
        with self.commands.command(RECEIVE, arg):
            self._group().broadcast_state(payload, "the round's shared parameters")
            super().receive(payload, completed_rounds)

    def train_round(self, round_number: int, progress: bool = False) -> Any:
        with self.commands.command(TRAIN, round_number):
            result = super().train_round(round_number, progress)
            agree_on_state(self._group(), self, f"after round {round_number}")
        return result

    def evaluate(self, split: str = "valid") -> Any:
        if split not in SPLITS:
            return super().evaluate(split)  # the usual error, nothing sent
        with self.commands.command(EVALUATE, SPLITS.index(split)):
            return super().evaluate(split)

    def load_full_state(self, state: Mapping[str, Any]) -> None:
        super().load_full_state(state)
        with self.commands.command(SYNC):
            self._group().broadcast_state(self.full_state(), "the resumed local state")


def make_leader_client(settings: ClientSettings, commands: Commands) -> Any:
    """The ordinary :class:`~scenario_client.runner.ScenarioClient` with a
    :class:`LeaderRuntime` whose trainer is a replica of the group's."""
    from scenario_client.runner import ScenarioClient

    group = commands.group

    class LeaderClient(ScenarioClient):
        def __init__(self) -> None:
            super().__init__(settings)
            self.commands = commands

        def _make_runtime(self, splits: ScenarioSplits, spec: FederationSpec) -> ClientRuntime:
            with self.commands.command(SETUP):
                group.broadcast_bytes(spec.to_json().encode(), "the federation spec")
                runtime = LeaderRuntime(
                    self.scenario, splits, spec.model_config(), spec.federation(), spec.train,
                    spec.seed, device="cpu", precision=settings.precision,
                    trainer_factory=DistributedTrainer.factory(group),
                )  # fmt: skip
                runtime.commands = self.commands
                try:
                    check_same_data(group, splits, self.scenario)
                except ReplicaGroupError as exc:
                    raise ReplicaError(str(exc)) from exc
            log.info(
                "%s: training as %d replicas (rank 0 talks to the aggregator)",
                self.scenario, group.world_size,
            )  # fmt: skip
            return runtime

    return LeaderClient()


def keepalive_interval(group: ReplicaGroup) -> float:
    """How long the channel may stay quiet: well inside the group's timeout."""
    return max(0.5, min(10.0, group.timeout_seconds / 4))


# -------------------------------------------------------------------------- follower
def follow(settings: ClientSettings, group: ReplicaGroup) -> int:
    """A follower's whole life: execute rank 0's commands until STOP (its exit code)."""
    from msmtrec.data.loader import DataValidationError, load_scenario

    scenario = settings.scenario
    runtime: ClientRuntime | None = None
    command = torch.zeros(3, dtype=torch.int64)
    while True:
        group.broadcast_(command, "waiting for rank 0")
        op, arg = int(command[0]), int(command[1])
        if op == NOOP:
            continue
        if op == STOP:
            log.info("%s: rank %d: rank 0 ended with exit code %d", scenario, group.rank, arg)
            return arg
        if op == SETUP:
            text = group.broadcast_bytes(None, "the federation spec").decode()
            spec = FederationSpec.from_json(text)
            splits = None
            try:
                # the same schema rank 0 loads with (its --spec, else the federation's)
                schema = dataset_schema(settings.dataset) if settings.dataset else spec.schema
                splits = load_scenario(settings.data, scenario, schema, spec.valid_fraction)
            except (DataValidationError, FileNotFoundError) as exc:
                log.error("%s: rank %d cannot load its data: %s", scenario, group.rank, exc)
            if splits is not None:
                runtime = ClientRuntime(
                    scenario, splits, spec.model_config(), spec.federation(), spec.train,
                    spec.seed, device="cpu", precision=settings.precision,
                    trainer_factory=DistributedTrainer.factory(group),
                )  # fmt: skip
            check_same_data(group, splits, scenario)
            assert splits is not None  # check_same_data raised otherwise
            log.info("%s: rank %d ready (%d train rows)", scenario, group.rank, len(splits.train))
            continue
        if runtime is None:
            raise ReplicaError(f"rank 0 sent command {op} before the set-up")
        if op == SYNC:
            state = group.broadcast_state(runtime.full_state(), "the resumed local state")
            runtime.load_full_state(state)
        elif op == RECEIVE:
            payload = group.broadcast_state(runtime.shared_state(), "the round's shared parameters")
            runtime.receive(payload, completed_rounds=None if arg < 0 else arg)
        elif op == TRAIN:
            runtime.train_round(arg)
            agree_on_state(group, runtime, f"after round {arg}")
            log.info("%s: rank %d trained round %d", scenario, group.rank, arg)
        elif op == EVALUATE:
            runtime.evaluate(SPLITS[arg])
        else:
            raise ReplicaError(f"unknown command {op} from rank 0")


def lead(settings: ClientSettings, group: ReplicaGroup) -> int:
    """Rank 0: the ordinary client loop; the followers learn its exit code whatever it is."""
    commands = Commands(group, keepalive_interval(group))
    code = 1
    try:
        try:
            client = make_leader_client(settings, commands)
        except (ClientError, OSError) as exc:
            logging.getLogger("scenario_client").error("%s: %s", settings.scenario, exc)
            code = 2
            return code
        code = client.run()
        return code
    finally:
        commands.stop(code)


def run_replica(settings: ClientSettings) -> int:
    """Entry point of every rank (``msmtrec client --distributed`` under torchrun)."""
    try:
        found = replica_env()
    except ValueError as exc:
        print(f"msmtrec client: invalid settings: {exc}")
        return 2
    if found is None:
        print("msmtrec client: invalid settings: --distributed needs torchrun (no WORLD_SIZE)")
        return 2
    if settings.privacy() is not None:
        print("msmtrec client: invalid settings: differential privacy (dp_*) trains in one "
              "process; it cannot be combined with --distributed")  # fmt: skip
        return 2
    if settings.device not in ("auto", "cpu"):
        print(f"msmtrec client: invalid settings: --distributed trains on the CPU (gloo), "
              f"not on device {settings.device!r}")  # fmt: skip
        return 2
    try:
        group = init_replicas(settings.replica_timeout_seconds)
    except (RuntimeError, ValueError) as exc:
        logging.getLogger("scenario_client").error("cannot join the replica group: %s", exc)
        return 1
    try:
        if group.is_leader:
            return lead(settings, group)
        try:
            return follow(settings, group)
        except ReplicaError as exc:
            log.error("%s: rank %d: %s", settings.scenario, group.rank, exc)
            return 2
        except ReplicaGroupError as exc:
            log.error("%s: rank %d: %s", settings.scenario, group.rank, exc)
            return 1
    finally:
        close_replicas()
