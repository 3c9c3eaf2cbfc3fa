"""An advisory lock on the aggregator's state directory, held for the process's life.

Why: two aggregators on one ``--state-dir`` would both write checkpoints and
``history.json`` there, and the start-up cleanup of the second
(:meth:`~aggregator.checkpoint.CheckpointStore.remove_stale_temps`) could delete the
first's checkpoint in the middle of its write. The lock is taken before anything in the
directory is read or cleaned, so a second aggregator refuses to start with one line naming
the holder; the kernel drops an ``flock`` when its process dies (SIGKILL included), so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = ".aggregator.lock"


class StateDirBusy(ValueError):
    """Another live process holds the state directory's lock."""


class StateDirLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<state_dir>/.aggregator.lock``; the holder's pid is
    written into the file so that the refusal can name it."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        """Take the lock or raise :class:`StateDirBusy` at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateDirBusy(
                f"the state directory {self.path.parent} is in use by another aggregator "
                f"(pid {holder} holds {self.path.name}); two aggregators must never share "
                "a --state-dir: stop the other one, or give this one its own directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # a full disk must not stop the lock itself
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
