"""A TCP proxy on 127.0.0.1 that a test turns into a bad network: network faults without
a process dying (issue #16).

Modes, switched at any time with :meth:`FaultyProxy.set_mode`:

* ``pass``: bytes flow both ways.
* ``blackhole``: new connections are accepted and never forwarded (their bytes are read
  and dropped, for good); existing connections stop forwarding too (their bytes are held).
  Nothing is closed: the peers see silence, as behind a dead route.
* ``stall``: connections stay open, but no byte moves in either direction (held, not
  dropped: they flow again on ``pass``). :meth:`stall_after` arms it to start once a given
  number of further client→server bytes went through, i.e. in the middle of an upload.
* ``reset``: every connection is closed with a TCP RST, and new ones are reset at once.

``bytes_per_second`` makes the link slow (a pacing device: a client behind it takes a known
time per round, whatever the CPU does).

Bounded: at most ``max_connections`` at a time (more are reset), one thread per
connection, everything closed by :meth:`close`. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

MODES = ("pass", "blackhole", "stall", "reset")


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket | None
    held: dict[str, bytearray] = field(
        default_factory=lambda: {"up": bytearray(), "down": bytearray()}
    )


class FaultyProxy:
    """``127.0.0.1:<port>`` → ``upstream``; see the module docstring."""

    def __init__(
        self,
        upstream: tuple[str, int],
        max_connections: int = 32,
        bytes_per_second: float | None = None,
        record: bool = False,
    ) -> None:
        self.upstream = upstream
        # record=True keeps every client → server byte in ``recorded_up`` (a test that
        # inspects what actually went over the wire)
        self.record = record
        self.recorded_up = bytearray()
        self.max_connections = max_connections
        self.bytes_per_second = bytes_per_second  # a slow link (both directions together)
        self.mode = "pass"
        self.bytes_up = 0  # client → server bytes forwarded, in total
        self._stall_at: int | None = None
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)
        self._acceptor.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------ control
    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self.mode = mode
            self._stall_at = None
            doomed = list(self._pairs) if mode == "reset" else []
            if doomed:
                self._pairs.clear()
        for pair in doomed:
            _reset(pair.client)
            if pair.upstream is not None:
                _reset(pair.upstream)

    def stall_after(self, nbytes: int) -> None:
        """Switch to ``stall`` once ``nbytes`` more client→server bytes went through."""
        with self._lock:
            self._stall_at = self.bytes_up + nbytes

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closed.set()
        self.set_mode("reset")
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(5)

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ plumbing
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                mode, full = self.mode, len(self._pairs) >= self.max_connections
            if mode == "reset" or full:
                _reset(client)
                continue
            upstream = None
            if mode != "blackhole":
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _reset(client)
                    continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        try:
            self._pump_until_closed(pair)
        except OSError:
            pass
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            with contextlib.suppress(OSError):
                pair.client.close()
            if pair.upstream is not None:
                with contextlib.suppress(OSError):
                    pair.upstream.close()

    def _pump_until_closed(self, pair: _Pair) -> None:
        while not self._closed.is_set():
            with self._lock:
                if pair not in self._pairs:
                    return  # reset
            socks = [pair.client] + ([pair.upstream] if pair.upstream is not None else [])
            readable, _, _ = select.select(socks, [], [], 0.1)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                direction = "up" if sock is pair.client else "down"
                if pair.upstream is None:
                    continue  # accepted into a blackhole: read and dropped, forever silent
                pair.held[direction] += data  # forwarded below unless the mode holds it
                if self.record and direction == "up":
                    with self._lock:
                        self.recorded_up += data
            if pair.upstream is None:
                continue
            self._forward(pair, "up", pair.upstream)
            self._forward(pair, "down", pair.client)

    def _forward(self, pair: _Pair, direction: str, to: socket.socket) -> None:
        buf = pair.held[direction]
        while buf:
            with self._lock:
                if self.mode != "pass":
                    return  # stall / blackhole: hold the bytes
                chunk = len(buf)
                if direction == "up" and self._stall_at is not None:
                    chunk = min(chunk, max(0, self._stall_at - self.bytes_up))
                    if chunk == 0:
                        self.mode, self._stall_at = "stall", None
                        return
            sent = to.send(bytes(buf[: min(chunk, 16384)]))
            del buf[:sent]
            if self.bytes_per_second:
                time.sleep(sent / self.bytes_per_second)
            if direction == "up":
                with self._lock:
                    self.bytes_up += sent
