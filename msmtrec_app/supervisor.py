"""Service processes (``python -m msmtrec_app.cli <service> ...``) with a log file each, and
their orderly stop. One implementation for ``msmtrec up`` and the multi-process tests.

Why each piece:

* output goes to a log file, read incrementally (:meth:`ServiceProcess.new_lines`) or as a
  tail for a failure message, so a failing process says why;
* ``own_session``: the child leads its own process group, so Ctrl-C reaches the supervisor
  only and a stop reaches whatever the child started too (``up`` uses it);
* ``die_with_parent``: Linux ``PR_SET_PDEATHSIG``, so the child is terminated even when the
  supervisor is SIGKILLed. It fires when the *thread* that started the child exits, so only
  a supervisor that starts children from its main thread should ask for it;
* every wait is bounded; :func:`stop_all` sends SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def msmtrec_command(*args: str) -> list[str]:
    """The command line of ``msmtrec <args>`` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "msmtrec_app.cli", *args]


def _die_with_parent() -> None:
    """In the child between fork and exec: terminate this child when its parent dies, even by
    SIGKILL (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServiceProcess:
    """One ``msmtrec`` subprocess, its log file and how much of the log was read already."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        *,
        role: str = "service",
        own_session: bool = False,
        die_with_parent: bool = False,
        unset_env: Sequence[str] = (),
    ) -> None:
        self.name = name
        # variables removed from the child's environment (case-insensitively, as settings
        # read them): ``up`` drops those that would override its config file
        self.unset_env = tuple(unset_env)
        self.role = role  # e.g. aggregator | client | gateway: the stop order of `up`
        self.args = list(args)
        self.log_path = Path(log_path)
        self.own_session = own_session
        self.die_with_parent = die_with_parent and sys.platform == "linux"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._offset = 0
        self._partial = ""

    def start(self, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        drop = {k.upper() for k in self.unset_env}
        inherited = {k: v for k, v in os.environ.items() if k.upper() not in drop}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                msmtrec_command(*self.args),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=self.own_session,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    # ------------------------------------------------------------------------- state
    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def poll(self) -> int | None:
        if self.proc is None:
            return None
        if self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit code; TimeoutError (with the log tail) if it runs on past ``timeout``."""
        assert self.proc is not None, f"{self.name} was never started"
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} did not exit within {timeout:.0f} s; log tail:\n{self.tail()}"
            ) from None
        return self.returncode

    # --------------------------------------------------------------------------- logs
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 25, indent: str = "") -> str:
        lines = self.log().splitlines()[-n:]
        if not lines:
            return f"{indent}(no log)"
        return "\n".join(f"{indent}{line}" for line in lines)

    def new_lines(self) -> list[str]:
        """Complete log lines written since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        return lines

    # ------------------------------------------------------------------------ signals
    def signal(self, sig: int) -> None:
        """To the child's process group when it leads one, else to the child alone."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_session:
                os.killpg(self.pid, sig)  # the child leads its own session: pgid == pid
            elif self.poll() is None:
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (a crash)."""
        if self.alive():
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)  # type: ignore[union-attr]
        self.poll()

    def stop(self, grace: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after ``grace``. True if it had to be killed."""
        killed = False
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.kill()
                killed = True
        if self.own_session:  # anything the child itself started (same session) goes too
            self.signal(signal.SIGKILL)
        self.poll()
        return killed


def stop_all(
    processes: Sequence[ServiceProcess],
    grace: float = 10.0,
    order: Callable[[ServiceProcess], int] | None = None,
) -> list[str]:
    """Stop every started process in ``order`` (default: the reverse of start order).
    Returns the names of those that had to be killed."""
    ordered = sorted(processes, key=order) if order else list(reversed(processes))
    return [p.name for p in ordered if p.proc is not None and p.stop(grace)]
