"""End to end: ``msmtrec up`` launches the whole topology as real processes on 127.0.0.1.

* the federation runs its rounds; the status API reports them (``/v1/rounds``,
  ``/v1/clients``); the gateway serves every scenario's final model; Ctrl-C (SIGINT) stops
  everything and leaves no process behind;
* ``--exit-after-training`` (here with TLS) exits 0 by itself, also leaving nothing behind;
* a client that fails (a malformed data file) makes ``up`` fail fast, naming the client and
  showing its log, and still cleans up;
* a port the user asked for that is busy is refused before anything starts.

Data is tiny (3 scenarios × 3000 rows, 2 rounds): this tests the plumbing, not the model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from helpers.processes import REPO, wait_until

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.registry import ModelRegistry
from msmtrec_app.supervisor import ServiceProcess

SCENARIOS = ("NL", "ES", "FR")
SMALL = ["--rows", "3000", "--test-rows", "600", "--rounds", "2"]
FREE_PORTS = ["--grpc-port", "0", "--status-port", "0", "--gateway-port", "0"]
START = 240  # seconds until serving, on a busy 2-core machine (5 processes import torch)


def sessions_alive(sids: set[int]) -> list[str]:
    """Processes (other than zombies) whose session id is one of ``sids``: every child of
    ``up`` leads its own session, so this finds the child and anything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])
        if session in sids and state != "Z":
            found.append(f"pid {entry.name} ({stat[: stat.rindex(')') + 1]}) state {state}")
    return found


class UpProcess(ServiceProcess):
    """``msmtrec up`` in the background (its own session, like a terminal's job) with its
    console captured to a file, under the supervisor ``up`` itself uses for its children."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        self.run_dir = run_dir
        self.console = run_dir.parent / f"{run_dir.name}-console.log"
        super().__init__("msmtrec up", ["up", "--run-dir", str(run_dir), *args], self.console,
                         own_session=True)  # fmt: skip
        self.start(cwd=REPO)

    def output(self) -> str:
        return self.log()

    def diagnostics(self) -> str:
        return f"--- msmtrec up console ---\n{self.output()[-6000:]}"

    def state(self) -> dict:
        return json.loads((self.run_dir / "up.json").read_text())

    def phase(self) -> str | None:
        if self.poll() is not None:
            raise AssertionError(f"msmtrec up exited with {self.returncode}\n{self.diagnostics()}")
        try:
            return self.state()["phase"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def wait(self, timeout: float) -> int:
        try:
            return super().wait(timeout)
        except TimeoutError:
            raise AssertionError(
                f"msmtrec up did not exit within {timeout:.0f} s\n{self.diagnostics()}"
            ) from None

    def close(self) -> None:
        """Last resort if a test failed midway: kill ``up`` and, via its state file, its
        children's sessions."""
        pids: list[int] = []
        with contextlib.suppress(Exception):
            pids = [c["pid"] for c in self.state()["children"].values()]
        self.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def launch(tmp_path):
    started: list[UpProcess] = []

    def _launch(name: str, *args: str) -> UpProcess:
        up = UpProcess(tmp_path / name, *args)
        started.append(up)
        return up

    yield _launch
    for up in started:
        up.close()


def read_instances(data_dir: Path, scenario: str, n: int) -> list[dict]:
    frame = pd.read_csv(data_dir / scenario / "test.csv", nrows=n)
    cat = set(ALIEXPRESS.categorical)
    return [
        {c: int(row[c]) if c in cat else float(row[c]) for c in ALIEXPRESS.feature_columns}
        for _, row in frame.iterrows()
    ]


def assert_nothing_left(up: UpProcess, children: dict) -> None:
    pids = {c["pid"] for c in children.values()}
    assert pids, "up.json listed no children"
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not our children: this only guards odd reparenting
    left = sessions_alive(pids)
    assert not left, f"processes left behind: {left}\n{up.diagnostics()}"


@pytest.mark.timeout(420)
def test_up_runs_the_topology_and_stops_cleanly_on_sigint(launch):
    up = launch("up", "--scenarios", *SCENARIOS, *SMALL, *FREE_PORTS, "--startup-timeout", "180")
    wait_until(lambda: up.phase() == "serving", START, "msmtrec up to serve", 0.5,
               up.diagnostics)  # fmt: skip
    state = up.state()
    status_url, gateway_url = state["urls"]["status"], state["urls"]["gateway"]
    assert status_url.startswith("http://127.0.0.1:") and gateway_url.startswith(
        "http://127.0.0.1:"
    )
    assert state["scenarios"] == list(SCENARIOS)

    # --- the operator's view: rounds and clients over REST
    status = httpx.get(f"{status_url}/v1/status", timeout=5).json()
    assert status["phase"] == "finished" and status["completed_rounds"] == 2
    rounds = httpx.get(f"{status_url}/v1/rounds", timeout=5).json()
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert sorted(r["participants"]) == sorted(SCENARIOS), r
        assert r["closed_by"] == "all_submitted"
        assert r["bytes_in"] > 0 and r["bytes_out"] > 0
    final_eval = {s: rounds[-1]["clients"][s]["eval"] for s in SCENARIOS}
    for s, ev in final_eval.items():
        assert set(ev["test"]) == {"ctr", "ctcvr"}, (s, ev)
    clients = httpx.get(f"{status_url}/v1/clients", timeout=5).json()
    assert {c["scenario"] for c in clients} == set(SCENARIOS)
    assert all(c["joined"] for c in clients), clients

    # --- the product's view: predictions for every scenario from the final models
    assert httpx.get(f"{gateway_url}/readyz", timeout=5).status_code == 200
    registry = ModelRegistry(up.run_dir / "registry")
    data_dir = Path(state["data"])
    for s in SCENARIOS:
        instances = read_instances(data_dir, s, 5)
        response = httpx.post(
            f"{gateway_url}/v1/scenarios/{s}/predict", json={"instances": instances}, timeout=10
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["scenario"] == s
        assert body["model_version"] == registry.latest_version(s)
        assert registry.latest(s).round == 2
        assert set(body["predictions"]) == {"ctr", "ctcvr"}
        for values in body["predictions"].values():
            assert len(values) == 5 and all(0.0 < v < 1.0 for v in values)
    unknown = httpx.post(f"{gateway_url}/v1/scenarios/XX/predict", json={"instances": []})
    assert unknown.status_code == 404

    # --- what the user saw: progress, one prediction per scenario, the URLs
    console = up.output()
    assert "round 2/2 closed" in console
    for s in SCENARIOS:
        assert f"[client {s}] round 1/2 trained" in console, console[-3000:]
        assert state["predictions"][s]["scenario"] == s
    assert f"curl -s {status_url}/v1/rounds" in console
    assert f"{gateway_url}/v1/scenarios/NL/predict" in console

    # --- Ctrl-C: everything stops, nothing is left
    children = state["children"]
    up.proc.send_signal(signal.SIGINT)
    assert up.wait(60) == 0, up.diagnostics()
    assert "stopped cleanly" in up.output()
    assert up.state()["phase"] == "stopped"
    assert_nothing_left(up, children)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway_url}/healthz", timeout=2)


@pytest.mark.timeout(360)
def test_up_exit_after_training_with_tls(launch):
    up = launch(
        "tls", "--scenarios", "NL", "ES", "--rows", "2000", "--test-rows", "400",
        "--rounds", "1", *FREE_PORTS, "--tls", "--exit-after-training",
    )  # fmt: skip
    assert up.wait(START) == 0, up.diagnostics()
    console = up.output()
    assert "tls: development CA" in console
    assert "first predictions" in console and "stopped cleanly" in console
    state = up.state()
    assert state["phase"] == "stopped"
    assert set(state["predictions"]) == {"NL", "ES"}
    assert "plaintext" not in (up.run_dir / "logs" / "aggregator.log").read_text()
    for name in ("tokens.yaml", "NL.token"):
        assert (up.run_dir / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert_nothing_left(up, state["children"])


@pytest.mark.timeout(360)
def test_up_device_auto_runs_unchanged_without_a_gpu(launch):
    """``msmtrec up --device auto`` (issue #17): the clients pick CUDA when there is one, else
    the CPU, and the run is the ordinary one; bf16 autocast works through the network path
    (the wire stays float32, so the aggregator accepts the updates)."""
    import torch

    up = launch(
        "auto", "--scenarios", "NL", "ES", "--rows", "2000", "--test-rows", "400",
        "--rounds", "1", *FREE_PORTS, "--device", "auto", "--precision", "bf16",
        "--exit-after-training",
    )  # fmt: skip
    assert up.wait(START) == 0, up.diagnostics()
    assert "first predictions" in up.output() and "stopped cleanly" in up.output()
    state = up.state()
    assert set(state["predictions"]) == {"NL", "ES"}
    where = "cuda" if torch.cuda.is_available() else "cpu"
    for s in ("NL", "ES"):
        log = (up.run_dir / "logs" / f"client-{s}.log").read_text()
        assert f"training on {where}" in log and "in bf16" in log, log[-2000:]
    assert_nothing_left(up, state["children"])


@pytest.mark.timeout(300)
def test_up_names_the_client_that_failed_and_cleans_up(launch, tmp_path):
    from msmtrec.data.synth import SynthConfig, synthesize

    data = tmp_path / "data"
    synthesize(data, SynthConfig(scenarios=("NL", "ES"), train_rows=1000, test_rows=200))
    bad = (data / "ES" / "train.csv").read_text().splitlines()
    cells = bad[5].split(",")
    cells[3] = "not-a-number"
    bad[5] = ",".join(cells)
    (data / "ES" / "train.csv").write_text("\n".join(bad) + "\n")

    up = launch("bad", "--data", str(data), "--rounds", "1", *FREE_PORTS)
    assert up.wait(START) == 1, up.diagnostics()
    console = up.output()
    assert "FAILED: client ES exited with code" in console, console[-3000:]
    assert "client-ES.log" in console  # the log it points to ...
    assert "not-a-number" in console or "train.csv" in console  # ... and its tail
    state = up.state()
    assert state["phase"] == "failed"
    assert_nothing_left(up, state["children"])


def test_up_refuses_a_busy_port_it_was_asked_for(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "msmtrec_app.cli", "up", "--run-dir", str(tmp_path / "busy"),
             "--gateway-port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {port} (--gateway-port) is already in use" in result.stdout
    assert time.monotonic() - started < 60
    assert not (tmp_path / "busy" / "data").exists()  # refused before doing any work


@pytest.mark.timeout(300)
def test_children_do_not_outlive_a_killed_up(launch):
    """Even SIGKILL (no cleanup code runs) leaves no orphans: PR_SET_PDEATHSIG."""
    up = launch("killed", "--scenarios", "NL", "ES", "--rows", "2000", "--rounds", "50",
                *FREE_PORTS)  # fmt: skip
    wait_until(lambda: up.phase() == "training", START, "training to start", 0.5,
               up.diagnostics)  # fmt: skip
    children = up.state()["children"]
    up.proc.send_signal(signal.SIGKILL)
    up.proc.wait(timeout=10)
    pids = {c["pid"] for c in children.values()}
    wait_until(lambda: not sessions_alive(pids), 60, "the children to exit after up died",
               0.5, lambda: "\n".join(sessions_alive(pids)))  # fmt: skip
