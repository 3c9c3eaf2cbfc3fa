"""A real full disk for tests: a size-limited tmpfs mounted over a test directory, filled to
the last byte and freed again.

Mounting needs root (or CAP_SYS_ADMIN); where it is not allowed the tests that need it
skip, saying so, and the write-failure injections of
``tests/integration/test_round_close_failure.py`` (a checkpoint store failing like
safetensors on a full disk) and ``tests/faults/test_storage.py::
test_unwritable_registry_without_a_mount`` cover the same code paths without a mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """``path`` as a fresh tmpfs of ``megabytes`` MB for the block's duration."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, name: str = ".filler") -> Path:
    """Write zeros into ``path/name`` until the file system refuses (ENOSPC) even one byte."""
    filler = path / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler
