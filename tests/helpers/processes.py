"""Real processes on 127.0.0.1 for integration tests, with bounded waits and cleanup.

Every wait takes a timeout and fails with what it was waiting for plus the tail of the
process logs, so a hung test says why instead of hitting the suite-wide timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from msmtrec_app.supervisor import ServiceProcess, stop_all

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess(ServiceProcess):
    """A ``python -m msmtrec_app.cli ...`` subprocess, started at once, whose output goes to
    ``<log_dir>/<name>.log``: the supervisor ``msmtrec up`` uses (msmtrec_app.supervisor),
    in the caller's session so that a test can signal the process itself."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, env: dict | None = None):
        super().__init__(name, args, Path(log_dir) / f"{name}.log")
        self.start(env, cwd=REPO)


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
        stop_all(self.procs)


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
