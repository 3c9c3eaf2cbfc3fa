"""Real processes on 127.0.0.1 for integration tests, with bounded waits and cleanup.

Every wait takes a timeout and fails with what it was waiting for plus the tail of the
process logs, so a hung test says why instead of hitting the suite-wide timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A ``python -m msmtrec_app.cli ...`` subprocess whose output goes to a log file."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.args = [sys.executable, "-m", "msmtrec_app.cli", *args]
        self.log_path = Path(log_dir) / f"{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f} s; log tail:\n{self.tail()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (a crash)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(Exception):
            self._log.close()


class ProcessGroup:
    """Launches processes and stops every one of them on exit (a pytest fixture uses it)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.procs: list[ManagedProcess] = []

    def launch(self, name: str, args: Sequence[str], env: dict | None = None) -> ManagedProcess:
        p = ManagedProcess(name, args, self.log_dir, env)
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.1,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # e.g. a service that is not listening yet
            last_error = exc
        time.sleep(interval)
    extra = f"\nlast error: {last_error!r}" if last_error else ""
    if diagnostics is not None:
        extra += "\n" + diagnostics()
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")


def get_json(url: str, timeout: float = 5.0):
    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    return response.json()
