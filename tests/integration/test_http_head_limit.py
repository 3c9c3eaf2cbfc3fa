"""The request-head bound is exact: a 64 KiB head is served, one byte more is a 431.

A real uvicorn with servicekit's protocol on 127.0.0.1 (the status API, which the gateway
shares the protocol with); heads are sent raw, in one write and split into many small
writes, so the bound cannot depend on how the bytes arrive.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from helpers.status_api import running_status_api

from servicekit.http_limits import MAX_HEAD_BYTES
from servicekit.problems import PROBLEM_JSON


def _head(size: int) -> bytes:
    """``GET /healthz`` whose head (request line + headers + blank line) is ``size`` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: "
    end = b"\r\nConnection: close\r\n\r\n"
    filler = size - len(start) - len(end)
    assert filler > 0
    return start + b"a" * filler + end


def _send(base: str, head: bytes, pieces: int) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        step = -(-len(head) // pieces)
        for i in range(0, len(head), step):
            try:
                s.sendall(head[i : i + step])
            except OSError:  # refused and closed mid-way: read what it said
                break
            if pieces > 1:
                time.sleep(0.002)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


@pytest.mark.parametrize("pieces", [1, 40])
def test_head_bound_is_exact(tmp_path, pieces):
    with running_status_api(tmp_path) as base:
        at_limit = _send(base, _head(MAX_HEAD_BYTES), pieces)
        assert at_limit.startswith(b"HTTP/1.1 200"), at_limit[:200]
        over = _send(base, _head(MAX_HEAD_BYTES + 1), pieces)
        assert over.startswith(b"HTTP/1.1 431"), over[:200]
        head, _, body = over.partition(b"\r\n\r\n")
        assert f"content-type: {PROBLEM_JSON}".encode() in head.lower()
        problem = json.loads(body)
        assert problem["status"] == 431 and problem["type"].endswith(":head-too-large")
        assert str(MAX_HEAD_BYTES) in problem["detail"]
