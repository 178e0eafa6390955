"""One write per reply (service/onewrite.py), counted by the kernel: the client's socket reports
how many data segments it received (TCP_INFO's tcpi_data_segs_in). Over loopback with
TCP_NODELAY every send() of a small reply is one segment, so stock uvicorn's reply (headers,
then body) arrives as two and the service's as one. Each reply is also read whole and checked,
including those without a body write (HEAD, 304) and one that closes the connection."""

from __future__ import annotations

import os
import socket
import struct
import sys

import numpy as np
import pytest
from conftest import npy, read_reply
from test_service_http import free_port, server, store  # noqa: F401 (fixtures)

from bench.bench_http import start, stop

# struct tcp_info (linux/tcp.h): tcpi_data_segs_in follows 152 bytes of older fields.
DATA_SEGS_IN = 152
IMAGE = npy(np.zeros((1, 3, 32, 32), np.uint8))


def segments_in(sock: socket.socket) -> int:
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160),
                              DATA_SEGS_IN)[0]


def exchange(sock: socket.socket, request: bytes, head_only: bool = False):
    """(status, headers, body, data segments the reply came in) of one request."""
    before = segments_in(sock)
    sock.sendall(request)
    status, headers, body = read_reply(sock, head_only)
    return status, headers, body, segments_in(sock) - before


def post(path: str, body: bytes, ctype: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("one_write", [False, True])
def test_stock_uvicorn_replies_in_two_segments_and_one_write_in_one(one_write, tmp_path):
    """The measurement itself: the same bare app (bench/raw_asgi.py) on stock uvicorn, then with
    service/onewrite.py installed."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.raw_asgi", "--port", str(port)] + \
        (["--one-write"] if one_write else [])
    proc = start(cmd, os.environ.copy(), f"http://127.0.0.1:{port}/predict", tmp_path / "raw.log")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            got = [exchange(sock, post("/predict", IMAGE, "application/x-npy"))
                   for _ in range(10)]
    finally:
        stop(proc)
    assert all(status == 200 and body == b"[[0.5,0.5]]" for status, _, body, _ in got)
    assert [segments for *_, segments in got] == [1 if one_write else 2] * 10


def test_every_kind_of_service_reply_arrives_whole_in_one_segment(server):
    """Inference routes of the request layer, BentoML's own routes behind it, a reply to HEAD,
    a 304, an error and a reply that closes the connection."""
    address = (server.base_url.host, server.base_url.port)
    etag = server.get("/ui").headers["etag"]
    v2 = b'{"inputs":[{"name":"images","shape":[1,3,32,32],"datatype":"UINT8",' \
         b'"parameters":{"binary_data_size":3072}}]}'
    cases = [  # (request, head only, status)
        (post("/predict", IMAGE, "application/x-npy"), False, 200),
        (post("/v2/models/convnet/infer", v2 + bytes(3072), "application/octet-stream",
              f"Inference-Header-Content-Length: {len(v2)}\r\n"), False, 200),
        (post("/predict", b"not an array", "application/x-npy"), False, 400),
        (get("/readyz"), False, 200),
        (get("/readyz", "HEAD"), True, 200),
        (get("/info"), False, 200),
        (get("/metrics"), False, 200),
        (get("/ui", extra=f"If-None-Match: {etag}\r\n"), True, 304),
        (get("/ui"), False, 200),
    ]
    with socket.create_connection(address, timeout=30) as sock:
        for request, head_only, status in cases:
            got, headers, body, segments = exchange(sock, request, head_only)
            assert (got, segments) == (status, 1), request[:60]
            assert head_only or len(body) == int(headers["content-length"])
    with socket.create_connection(address, timeout=30) as sock:
        got, headers, body, segments = exchange(sock, get("/readyz", extra="Connection: close\r\n"))
        assert (got, segments) == (200, 1) and len(body) == int(headers["content-length"])
        assert sock.recv(1) == b""  # then the server closed the connection

