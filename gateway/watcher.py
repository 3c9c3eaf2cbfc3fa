"""Background polling of the registry's ``LATEST`` pointers.

Polling (not inotify) because the registry is often a shared volume (Docker, NFS) where file
events are unreliable, and a pointer read per scenario every few seconds costs nothing. The
loop runs in a daemon thread so that loading, hashing and compiling a new version (up to a
second for the paper preset) never runs on the event loop; requests keep being served by the
old model meanwhile.
"""

from __future__ import annotations

import logging
import threading

from gateway.store import ModelStore

log = logging.getLogger("msmtrec.gateway")


class RegistryWatcher:
    def __init__(self, store: ModelStore, interval: float) -> None:
        if interval <= 0:
            raise ValueError("poll interval must be > 0")
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:  # first scan at once, then every interval until stopped
            try:
                self.store.refresh()
            except Exception:  # never let one bad scan stop hot reload for good
                log.exception("registry scan failed")
            if self._stop.wait(self.interval):
                return

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
