"""A bound on the size of an HTTP request head, for the uvicorn servers of the services.

Why: uvicorn's httptools protocol (the fast HTTP parser the gateway relies on) buffers a
request line and headers of any size: one 200 MB header grew the gateway by 220 MB in the
reliability suite (tests/faults/test_limits.py), so a few concurrent clients could exhaust
its memory before any application code runs. The body limits of the gateway never see
this, because the head is parsed first. :class:`BoundedHttpToolsProtocol` counts the bytes
received while a request head is incomplete and answers ``431 Request Header Fields Too
Large`` (and closes) once they pass :data:`MAX_HEAD_BYTES`. Pass it as ``http=`` to
``uvicorn.run``/``uvicorn.Config``. Used only by the service shells (gateway, status API);
the core library stays free of network code.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 << 10  # request line + headers; browsers and proxies stay far below


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request head (see module doc)."""

    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # After parsing: if the head is still incomplete, all of ``data`` belonged to it (a
        # read that completed it reset the count). Memory is bounded by the limit plus one
        # read.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()

    def _refuse_head(self) -> None:
        msg = f"request head larger than {self.max_head_bytes} bytes"
        self.logger.warning("refused a request: %s", msg)
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    msg.encode("ascii"),
                ]
            )
        )
        self.transport.close()
        self._in_head = False
