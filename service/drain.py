"""Graceful stop: on SIGTERM a worker fails readiness at once, keeps serving for CIFAR2_DRAIN_S
seconds (lame duck), then stops taking connections, finishes the requests in flight and exits.

    CIFAR2_DRAIN_S=5 bentoml serve      # then: kill -TERM <pid>   (or docker stop, kubectl delete)

How the signal travels. ``bentoml serve`` is a circus arbiter (PID 1 in the container) holding the
listening socket, with uvicorn worker processes accepting on it. On SIGTERM the arbiter sends
SIGTERM to every worker and waits for them (BentoML sets no kill timeout), then closes the socket
and exits 0. Left alone, uvicorn stops accepting the moment it gets the signal, so readiness never
gets a chance to say "not ready" while the load balancer still sends traffic, and connections that
the kernel already queued on the shared socket were reset when the arbiter closed it: their
requests were sent but never answered.

So each worker replaces uvicorn's SIGTERM handler (at ASGI lifespan startup, after uvicorn has
installed its own) with this sequence:
1. readiness false at once: /readyz and /v2/health/ready answer 503, every reply carries
   ``Connection: close`` so keep-alive clients reconnect (through the LB, to another replica);
2. serve normally for CIFAR2_DRAIN_S seconds, the time LBs and Kubernetes endpoints need to
   take the replica out;
3. refuse new connections: a drop-everything socket filter on the shared listening socket makes
   the kernel ignore new SYNs (clients retry and get "connection refused" once the socket
   closes) while the workers accept what is already queued; wait until that queue is empty;
4. shut the listening socket down (for every process: new connections are refused at once,
   and none waits on the arbiter's copy to be reset later), then hand over to uvicorn's own
   graceful shutdown: in-flight requests finish, the worker exits. SIGINT (Ctrl-C) and a
   second SIGTERM skip the lame duck.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import struct
import threading
import time

from service import config
from service.replies import Headers, Reply

logger = logging.getLogger("cifar2.drain")

READY_PATHS = ("/readyz", "/v2/health/ready")
_SO_ATTACH_FILTER = 26  # Linux, <asm-generic/socket.h>
_BACKLOG_WAIT_S = 2.0   # longest wait for the kernel's accept queue to empty
_SETTLE_S = 2.0         # longest wait for the last accepted connections' request headers


def drain_seconds() -> int:
    """CIFAR2_DRAIN_S, whole seconds (default 5): inside docker stop's 10 s and Kubernetes' 30 s."""
    return config._int("CIFAR2_DRAIN_S", 5)  # the one parser of the service's integer knobs


class State:
    draining = False
    in_flight = 0
    installed = False


STATE = State()


def refusal(scope) -> Reply | None:
    """While draining, the readiness probes answer 503 (Connection: close); else None."""
    if STATE.draining and scope["path"].rstrip("/") in READY_PATHS:
        return Reply.error(503, "not ready: draining, this replica is shutting down",
                           [(b"connection", b"close")])
    return None


def closing(headers: Headers) -> Headers:
    """A reply's headers with ``Connection: close``, for replies sent while draining, so that
    clients reconnect to another replica."""
    return [*((k, v) for k, v in headers if k.lower() != b"connection"), (b"connection", b"close")]


class Drain:
    """ASGI middleware: the readiness answer and Connection: close while draining, the count of
    requests in flight, and the SIGTERM hook (installed at lifespan startup). The request layer
    (service/routes.py) does the same for its routes with ``refusal``, ``closing`` and
    ``STATE.in_flight``."""

    def __init__(self, app, drain_s: int | None = None):
        self.app = app
        self.drain_s = drain_seconds() if drain_s is None else drain_s

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            install(self.drain_s)
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = refusal(scope)
        if refused is not None:
            return await refused.send(send)
        STATE.in_flight += 1
        # Requests already in flight when SIGTERM comes keep their connection until uvicorn's
        # own shutdown closes it; not wrapping every request's send saves a coroutine call per
        # message.
        if STATE.draining:
            send = _close_when_draining(send)
        try:
            await self.app(scope, receive, send)
        finally:
            STATE.in_flight -= 1


def _close_when_draining(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": closing(message.get("headers", []))}
        await send(message)
    return wrapped


def install(drain_s: float) -> None:
    """Wrap the running server's SIGTERM/SIGINT handler (uvicorn's) with the drain sequence."""
    if STATE.installed or threading.current_thread() is not threading.main_thread():
        return
    server_exit = signal.getsignal(signal.SIGTERM)
    if not callable(server_exit):  # not under a server that handles SIGTERM: nothing to wrap
        return
    loop = asyncio.get_running_loop()
    STATE.installed = True

    def on_signal(sig, frame):
        if STATE.draining or sig != signal.SIGTERM:
            STATE.draining = True
            return server_exit(sig, frame)  # stop now (uvicorn still finishes in-flight work)
        STATE.draining = True
        logger.warning("SIGTERM: readiness is false; serving %.1f s more before stopping", drain_s)
        loop.call_soon_threadsafe(_start, loop, server_exit, sig, drain_s)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _start(loop, server_exit, sig, drain_s):
    loop.create_task(_lame_duck(server_exit, sig, drain_s))


async def _lame_duck(server_exit, sig, drain_s: float) -> None:
    await asyncio.sleep(drain_s)
    listeners = _listening_sockets(server_exit)
    for sock in listeners:
        _refuse_new_connections(sock)
    deadline = time.monotonic() + _BACKLOG_WAIT_S
    while time.monotonic() < deadline and any(_queued(s) for s in listeners):
        await asyncio.sleep(0.005)
    for sock in listeners:
        _stop_listening(sock)
        sock.close()  # our duplicate only; uvicorn closes its own
    await _requests_started(getattr(server_exit, "__self__", None))
    logger.warning("drained: no new connections; finishing %d request(s) in flight",
                   STATE.in_flight)
    server_exit(sig, None)


async def _requests_started(server) -> None:
    """Wait until every connection accepted so far has sent its request (up to _SETTLE_S).

    uvicorn's shutdown closes connections that have no request in progress, at once: right for
    idle keep-alive connections, but a connection accepted moments ago whose request is still
    in the socket buffer (a loaded machine reads it late) would be closed with its request
    unanswered. uvicorn gives a connection its first request cycle when the headers are read.
    """
    connections = getattr(getattr(server, "server_state", None), "connections", None)
    deadline = time.monotonic() + _SETTLE_S
    while connections and time.monotonic() < deadline:
        if all(getattr(c, "cycle", True) is not None for c in list(connections)):
            return
        await asyncio.sleep(0.01)


def _listening_sockets(server_exit) -> list[socket.socket]:
    """The uvicorn server's listening sockets, as socket objects on duplicated fds."""
    server = getattr(server_exit, "__self__", None)
    found = []
    for srv in getattr(server, "servers", None) or []:
        for s in srv.sockets or ():
            if s.family in (socket.AF_INET, socket.AF_INET6):
                found.append(socket.socket(fileno=os.dup(s.fileno())))
    return found


def _refuse_new_connections(sock: socket.socket) -> None:
    """Attach a one-instruction BPF program (``ret 0``: drop) to the listening socket.

    The socket is shared by the arbiter and every worker, so this acts for all of them: new SYNs
    are dropped, while connections the kernel already completed stay queued for accept().
    Closing the socket instead would reset those queued connections, whose requests are sent.
    """
    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * 1)(SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0
    fprog = SockFprog(1, program)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(fprog))
    except OSError as e:  # not Linux, or not allowed (some container runtimes)
        logger.warning("could not filter new connections (%s); shutting the listener down as "
                       "soon as its accept queue is empty instead", e)


def _queued(sock: socket.socket) -> int:
    """Connections waiting in the kernel's accept queue (TCP_INFO tcpi_unacked on a listener)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return 0
    # struct tcp_info: 8 x u8, then u32 rto, ato, snd_mss, rcv_mss, unacked (offset 24).
    return struct.unpack_from("I", info, 24)[0]


def _stop_listening(sock: socket.socket) -> None:
    """Take the shared socket out of LISTEN for every process at once (shutdown acts on the
    socket, close only on this process's fd): new connections are refused at once instead of
    queueing on the copy the arbiter keeps open until the workers exit, and being reset then.
    The accept queue is empty by now (see _lame_duck), so no sent request is reset with it."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:  # the other worker got there first
        pass
