"""A small networked federation for fault injection: processes with fault points, markers,
bounded waits, and the checks every fault test ends with.

The fault points (``msmtrec/faults.py``) make a process pause at a named place and write a
marker file; :meth:`FaultRun.wait_paused` waits for that marker, and the test SIGKILLs the
process there. :meth:`FaultRun.assert_recovered` then checks what the reliability report
promises after every fault: the federation completed all its rounds, each exactly once, no
round that had completed before the fault was lost or changed, every client finished, and
every scenario's latest registry version loads and predicts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from hypothesis import HealthCheck, settings

from aggregator.checkpoint import CheckpointStore
from helpers.federation import Federation
from helpers.processes import ManagedProcess, ProcessGroup, wait_until
from msmtrec.data.loader import load_scenario
from msmtrec.faults import DIR_ENV, PAUSE_ENV
from msmtrec.registry import TMP_PREFIX, ModelRegistry

START = 120.0  # process start-up on a busy 2-core machine (torch, sklearn imports)
FULL = os.environ.get("MSMTREC_FULL_FAULTS") == "1"  # the exhaustive variants (RELIABILITY.md)

# Property-based tests: a CI-sized sample by default, a large one for the full run.
settings.register_profile(
    "faults-ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "faults-full",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = "faults-full" if FULL else "faults-ci"


@dataclass
class FaultRun:
    """One federation under test: ``fed`` (data, tokens, ports), a registry, a marker dir."""

    fed: Federation
    processes: ProcessGroup
    rounds: int
    agg_settings: dict[str, Any] = field(default_factory=dict)
    client_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        tmp_path: Path,
        processes: ProcessGroup,
        *,
        scenarios: Sequence[str] = ("S0", "S1"),
        rounds: int = 3,
        train_rows: int = 1000,
        test_rows: int = 300,
        **agg_settings: Any,
    ) -> FaultRun:
        fed = Federation.create(
            tmp_path, tuple(scenarios), train_rows=train_rows, test_rows=test_rows
        )
        # 64 KiB chunks: the small preset's 0.64 MB payload travels in 10 chunks each way,
        # so a fault point can stop a transfer in its middle.
        base = {"rounds": rounds, "chunk_bytes": 64 << 10, "exit_when_done": True}
        return cls(fed, processes, rounds, {**base, **agg_settings})

    # ------------------------------------------------------------------------ paths
    @property
    def registry(self) -> Path:
        return self.fed.root / "registry"

    @property
    def markers(self) -> Path:
        return self.fed.root / "markers"

    @property
    def checkpoints(self) -> CheckpointStore:
        return CheckpointStore(self.fed.state_dir / "checkpoints")

    # -------------------------------------------------------------------- processes
    def _env(self, pause: str | None) -> dict[str, str]:
        env = {DIR_ENV: str(self.markers)}
        if pause:
            env[PAUSE_ENV] = pause
        return env

    def aggregator(
        self, name: str = "aggregator", pause: str | None = None, **settings: Any
    ) -> ManagedProcess:
        args = self.fed.aggregator_args(**{**self.agg_settings, **settings})
        return self.processes.launch(name, args, env=self._env(pause))

    def client(
        self, scenario: str, name: str | None = None, pause: str | None = None, **settings: Any
    ) -> ManagedProcess:
        merged = {"registry": self.registry, **self.client_settings, **settings}
        args = self.fed.client_args(scenario, **merged)
        return self.processes.launch(name or scenario, args, env=self._env(pause))

    def wait_paused(self, proc: ManagedProcess, point: str, timeout: float = START) -> Path:
        """Wait until ``proc`` reached fault point ``point`` (and is sleeping there)."""

        def marker() -> Path | None:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited before reaching {point}:\n{proc.tail()}")
            found = sorted(self.markers.glob(f"{point}*.{proc.pid}"))
            return found[0] if found else None

        return wait_until(marker, timeout, f"{proc.name} to pause at {point}", 0.05,
                          self.processes.logs)  # fmt: skip

    # ----------------------------------------------------------------------- status
    def completed(self) -> dict[int, str]:
        """round → state checksum of every completed round, from the live status API."""
        rounds = httpx.get(self.fed.url("/v1/rounds"), timeout=3).json()
        return {r["round"]: r["state_checksum"] for r in rounds}

    def status(self) -> dict[str, Any]:
        return httpx.get(self.fed.url("/v1/status"), timeout=3).json()

    def durable(self) -> dict[int, str]:
        """round → state checksum of the rounds in the newest verified checkpoint."""
        ckpt = self.checkpoints.load_latest()
        if ckpt is None:
            return {}
        return {r["round"]: r["state_checksum"] for r in ckpt.state["history"]}

    # ----------------------------------------------------------------------- checks
    def finish(self, clients: Sequence[ManagedProcess], agg: ManagedProcess) -> None:
        """Every client exits 0 (finished and evaluated its final model), then the
        aggregator (``exit_when_done``)."""
        for c in clients:
            assert c.wait(START) == 0, f"{c.name} failed:\n{self.processes.logs()}"
        assert agg.wait(60) == 0, f"{agg.name} failed:\n{agg.tail()}"

    def assert_recovered(self, before: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """The promises of docs/RELIABILITY.md after a fault; returns the round history."""
        ckpt = self.checkpoints.load_latest()
        assert ckpt is not None, "no checkpoint"
        history = ckpt.state["history"]
        assert [r["round"] for r in history] == list(range(1, self.rounds + 1)), history
        final = {r["round"]: r["state_checksum"] for r in history}
        for r, checksum in (before or {}).items():  # no completed round lost or redone
            assert final.get(r) == checksum, f"round {r} completed before the fault was lost"
        for r in history:
            assert r["participants"], r
        self.assert_servable()
        self.assert_nothing_leaked()
        return history

    def assert_nothing_leaked(self) -> None:
        """No token in any process log, history file or registry metadata, and no
        traceback in any log: every fault above is handled, not crashed through."""
        tokens = [self.fed.token_file(s).read_text().strip() for s in self.fed.scenarios]
        files = [*self.processes.log_dir.glob("*.log"), *self.registry.rglob("metadata.json")]
        files += list(self.fed.state_dir.glob("*.json"))
        for path in files:
            text = path.read_text(errors="replace")
            for t in tokens:
                assert t not in text, f"a bearer token appears in {path}"
            if path.suffix == ".log":
                assert "Traceback" not in text, f"{path.name} has a traceback:\n{text[-3000:]}"

    def assert_servable(self, scenarios: Sequence[str] | None = None) -> None:
        """Each scenario's LATEST version is the final one, loads, and predicts finite
        probabilities for its own test rows; no half-written version is left behind."""
        registry = ModelRegistry(self.registry)
        for s in scenarios or self.fed.scenarios:
            loaded = registry.load(s)
            assert loaded.info.round == self.rounds, (s, loaded.info.version)
            test = load_scenario(self.fed.data, s).test
            with torch.inference_mode():
                logits = loaded.model(
                    torch.from_numpy(test.categorical[:64].astype(np.int64)),
                    torch.from_numpy(test.numerical[:64]),
                )
            probs = torch.sigmoid(logits)
            assert probs.shape == (min(64, len(test)), len(loaded.model.tasks))
            assert torch.isfinite(probs).all() and probs.min() > 0 and probs.max() < 1
            leftovers = [p.name for p in (self.registry / s).iterdir()
                         if p.name.startswith(TMP_PREFIX)]  # fmt: skip
            assert not leftovers, (s, leftovers)


def assert_no_orphans(processes: ProcessGroup, root: Path) -> None:
    """After cleanup: every launched process is gone, and no process anywhere still runs
    with this test's directory on its command line (a child that escaped its parent)."""
    alive = [p.name for p in processes.procs if p.alive()]
    assert not alive, f"still running: {alive}"
    needle = str(root).encode()
    strays = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            strays.append((entry.name, cmdline.replace(b"\0", b" ")[:200]))
    assert not strays, f"orphan processes: {strays}"


def assert_equals_uninterrupted(run: FaultRun, tolerance: float = 1e-6) -> None:
    """The faulted federation produced exactly what an uninterrupted one does: the
    aggregator's next payload for every scenario and each client's whole local state equal
    the in-process simulation's (same spec, seed and data) — the fault cost time only."""
    from safetensors.torch import load_file

    from msmtrec.federation.strategy import Strategy
    from msmtrec.simulation import run_simulation
    from msmtrec.spec import FederationSpec
    from scenario_client.state import FILE

    spec = FederationSpec(rounds=run.rounds)
    captured: dict[str, dict[str, torch.Tensor]] = {}

    def on_round(r: int, clients: dict) -> None:
        if r == run.rounds:
            captured.update({s: c.full_state() for s, c in clients.items()})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client processes train
    try:
        run_simulation(spec.to_simulation(run.fed.data), log=lambda _: None, on_round=on_round)
    finally:
        torch.set_num_threads(threads)
    ckpt = run.checkpoints.load_latest()
    assert ckpt is not None and ckpt.round == run.rounds
    strategy = Strategy(spec.federation(), spec.initial_state())
    strategy.load_state_dict(ckpt.tensors, ckpt.state["strategy"])

    def worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        assert set(a) <= set(b), sorted(set(a) - set(b))[:5]
        out = 0.0
        for name, t in a.items():
            if t.is_floating_point():
                out = max(out, float((t.double() - b[name].double()).abs().max()))
            else:
                assert torch.equal(t, b[name]), name
        return out

    for s in run.fed.scenarios:
        assert worst(strategy.payload(s), captured[s]) <= tolerance, s
        local = load_file(str(run.fed.client_state_dir(s) / FILE))
        assert set(local) == set(captured[s])
        assert worst(local, captured[s]) <= tolerance, s
