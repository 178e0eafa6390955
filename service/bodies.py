"""Reading a request body whole: the one reader for the request layer's routes
(service/routes.py) and for the limits middleware in front of every other path
(service/limits.py), so that both cap a body while it comes in and time a slow one alike.

- A body above ``max_bytes`` is refused as soon as it has grown past it (413, by the caller's
  reply): one with Content-Length was refused before it was read (``RequestLimits.refusal``),
  so this is for bodies sent in chunks.
- A body still incomplete CIFAR2_BODY_TIMEOUT_S after its first bytes gets 408 and the
  connection is closed: a client trickling a body would otherwise hold its connection, and a
  SIGTERM drain waiting on it, for as long as it likes. The timer exists only for bodies that
  come in several pieces; one-piece bodies (every small request) pay nothing.
- A client that leaves before sending it all gets nothing: there is no one to answer, and no
  handler sees half a body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service import config
from service.errors import BadInput
from service.replies import Reply


class BodyTooLarge(Exception):
    """A body that came in pieces grew past the cap."""


async def read_or_refusal(receive, max_bytes: int | None, too_large: Callable[[], Reply]
                          ) -> tuple[bytes | None, Reply | None]:
    """(body, None), or (None, the reply refusing it), or (None, None) if the client left.
    ``too_large()`` makes the 413 (the limits' own, naming the cap)."""
    try:
        return await read_body(receive, config.BODY_TIMEOUT_S, max_bytes), None
    except BodyTooLarge:
        return None, too_large()
    except BadInput as e:  # too slow: answer, and close the connection it holds
        return None, Reply.json(e.body(), e.status, [(b"connection", b"close")])


async def read_body(receive, timeout_s: float, max_bytes: int | None) -> bytes | None:
    """The whole body, or None if the client left first; BodyTooLarge past ``max_bytes``
    (None: no cap); BadInput (408) if it is not complete ``timeout_s`` after it began."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    chunks = [message.get("body", b"")]
    size = len(chunks[0])
    if max_bytes is not None and size > max_bytes:
        raise BodyTooLarge
    if not message.get("more_body", False):
        return chunks[0]
    task, expired = asyncio.current_task(), []

    def expire():
        expired.append(True)
        task.cancel()
    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if max_bytes is not None and size > max_bytes:
                raise BodyTooLarge
            if not message.get("more_body", False):
                return b"".join(chunks)
    except asyncio.CancelledError:
        if not expired:
            raise
        task.uncancel()  # the cancellation was ours, and it is handled here
        raise BadInput(f"the request body was not complete {timeout_s:g} s after it began "
                       "(CIFAR2_BODY_TIMEOUT_S); send it faster or in smaller requests",
                       status=408) from None
    finally:
        timer.cancel()
