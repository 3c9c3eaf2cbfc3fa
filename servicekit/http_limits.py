"""A bound on the size of an HTTP request head, for the uvicorn servers of the services.

Why: uvicorn's httptools protocol (the fast HTTP parser the gateway relies on) buffers a
request line and headers of any size: one 200 MB header grew the gateway by 220 MB in the
reliability suite (tests/faults/test_limits.py), so a few concurrent clients could exhaust
its memory before any application code runs. The body limits of the gateway never see
this, because the head is parsed first.

:class:`BoundedHttpToolsProtocol` answers ``431 Request Header Fields Too Large`` (an RFC
9457 problem, servicekit.problems) and closes the connection when a request head is over
:data:`MAX_HEAD_BYTES` (64 KiB), exactly: the head's size is the request line plus every
header line, ``METHOD SP target SP HTTP/x.y CRLF`` + Σ ``name: value CRLF`` + ``CRLF``,
counted from what the parser reports, so a 64 KiB head is served and one byte more is
refused, however the bytes were split into reads. A head that has not ended yet is
bounded too (what arrived while it was incomplete is counted, so memory stays within the
limit plus one read). Pass the class as ``http=`` to ``uvicorn.run``/``uvicorn.Config``.
Used only by the service shells (gateway, status API); the core library stays free of
network code.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from servicekit.problems import PROBLEM_JSON, problem_body

MAX_HEAD_BYTES = 64 << 10  # request line + headers; browsers and proxies stay far below
_LINE_END = 2  # CRLF
_REQUEST_LINE_FIXED = len(" ") * 2 + len("HTTP/1.1") + _LINE_END  # around method and target


class _HeadTooLarge(Exception):
    """Raised from a parser callback: stops parsing this request before the app sees it."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request head (see module doc)."""

    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0  # received while the head was incomplete (memory bound)
        self._parsed_head = 0  # the head's size as parsed so far (the exact bound)
        self._head_refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._parsed_head = _REQUEST_LINE_FIXED + _LINE_END  # + the empty line ending the head
        self._head_refused = False

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + 2 + len(value) + _LINE_END)  # "name: value\r\n"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        method = self.parser.get_method()
        self._count(len(method))
        super().on_headers_complete()

    def _count(self, n: int) -> None:
        self._parsed_head += n
        if self._parsed_head > self.max_head_bytes:
            self._head_refused = True
            raise _HeadTooLarge  # httptools turns it into a parser error: see send_400_response

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers a parser error with 400; a head over the bound gets its 431."""
        if self._head_refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

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
        body = json.dumps(problem_body("head-too-large", msg)).encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[431],
                    b"content-type: " + PROBLEM_JSON.encode("ascii") + b"\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self._in_head = False
