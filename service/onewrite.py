"""One write per reply: the status line, headers and body of a response leave in one send().

uvicorn's httptools protocol writes a response's header block to the socket the moment the app
sends ``http.response.start``, and the body in a second write. For a single-image reply that is
two send() syscalls and two TCP segments, which the client then reads separately: profiled
under single-image load (py-spy, V2 binary at c=32), those two writes were 23% of a worker's
CPU, more than the rest of our request layer together. Here the header block waits for the
body's first write and goes out with it. A streaming reply's headers go out with its first
chunk (so a client sees them when that chunk is ready, not before), and later chunks are
written as before. A reply with no body write at all (HEAD, 304) gets its headers when it
completes.

``install()`` makes uvicorn create this cycle for each request, in this process only: the
service's workers call it (service/frontdoor.py), and so can bench/raw_asgi.py.
"""

from __future__ import annotations

from uvicorn.protocols.http import httptools_impl


class _HeldHeaders:
    """The connection's transport, except that its first write (uvicorn's header block) is held
    and sent together with the next one."""

    __slots__ = ("held", "transport")

    def __init__(self, transport):
        self.transport = transport
        self.held = None

    def write(self, data: bytes) -> None:
        if self.held is None:
            self.held = data
        else:
            self.transport.write(self.held + data)
            self.held = b""

    def flush(self) -> None:
        if self.held and not self.transport.is_closing():
            self.transport.write(self.held)
        self.held = b""

    def close(self) -> None:  # uvicorn closes after a `Connection: close` reply: headers first
        self.flush()
        self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)


class OneWriteCycle(httptools_impl.RequestResponseCycle):
    """uvicorn's request/response cycle, with the header block held for the body."""

    async def send(self, message) -> None:
        transport = self.transport
        if type(transport) is _HeldHeaders:  # the reply's first body message
            try:
                await super().send(message)
            finally:
                self.transport = transport.transport
                transport.flush()  # no body was written (HEAD, 304), or send() raised
        elif message["type"] == "http.response.start" and not self.response_started:
            self.transport = _HeldHeaders(transport)
            try:
                await super().send(message)
            except BaseException:  # refused before writing (a bad header): nothing is held
                self.transport = transport
                raise
        else:
            await super().send(message)


def install() -> None:
    """uvicorn's httptools protocol builds each request's cycle from this module attribute."""
    httptools_impl.RequestResponseCycle = OneWriteCycle
