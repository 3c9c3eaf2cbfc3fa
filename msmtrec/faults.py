"""Test-only fault points: make a process pause at a named place so a test can SIGKILL it there.

Why: "kill the aggregator while it writes a checkpoint" or "kill a client in the middle of
its upload" cannot be hit reliably by timing a signal from outside. The services call
:func:`fault_point` at a handful of named places; the fault-injection suite
(``tests/faults/``) starts a process with ``MSMTREC_FAULT_PAUSE=<point>[,<point>…]`` and,
when the process reaches such a point, it writes a marker file and sleeps until it is
killed. The test waits for the marker, then sends SIGKILL.

Guarantees, so that this can ship in production code:

* **Inert unless asked.** Without ``MSMTREC_FAULT_PAUSE`` in the environment a call is one
  dictionary lookup and returns at once.
* **It can only pause.** It never raises, never changes data, never exits: the worst a stray
  setting can do is stop a process at that point (which a health check or an operator sees).
  The one thing it writes is a marker file in ``MSMTREC_FAULT_DIR``, only if that is set.

A point is named ``<component>.<place>``; calls that pass an ``index`` (a round number, a
chunk number) also match ``<component>.<place>:<index>``, e.g. ``client.upload_chunk:3``
pauses before the fourth data chunk of an upload (indices start at 0), and
``aggregator.checkpoint_write:2`` while the checkpoint of round 2 is being written. The
points are listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

PAUSE_ENV = "MSMTREC_FAULT_PAUSE"
DIR_ENV = "MSMTREC_FAULT_DIR"


def fault_point(name: str, index: int | None = None) -> None:
    """Pause forever here if the environment names this point (test-only; see module doc)."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    points = {p.strip() for p in wanted.split(",")}
    hit = name if name in points else None
    if hit is None and index is not None and f"{name}:{index}" in points:
        hit = f"{name}:{index}"
    if hit is None:
        return
    try:
        print(f"fault point {hit}: pausing pid {os.getpid()} (test-only)", file=sys.stderr)
        sys.stderr.flush()
        directory = os.environ.get(DIR_ENV)
        if directory:
            marker = Path(directory) / f"{hit}.{os.getpid()}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{os.getpid()} {threading.current_thread().name}\n")
    except Exception:  # a fault point must never turn into an error of its own
        pass
    while True:
        time.sleep(3600)
