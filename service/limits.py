"""Request limits BentoML 1.4 does not have: a body-size cap (413) and load shedding (503).

An ASGI middleware, so the checks run before BentoML parses anything:
- Content-Length above the cap -> 413 at once; a chunked body is counted as it is buffered.
- A worker that is behind (service/sojourn.py: even its quickest recent requests waited longer
  than ``max_wait_s`` between their last body byte and their reply) -> 503 with Retry-After,
  before the body is read or decoded: turning a request away costs a fraction of serving it, so
  an overloaded worker answers everyone at once instead of holding connections for seconds.
- More requests in progress in this worker (bodies in, not yet answered) than
  ``max_in_flight`` -> 503 with Retry-After, a hard cap whatever the timing says; it bounds
  the burst a worker takes on before service/sojourn.py has measured anything.
- Any 503 the app itself sends (the batcher's admission control) gets a Retry-After header too.
- Whether the worker has requests in progress is also on a board the other workers read
  (service/neighbours.py): an idle worker lends its core to a busy one's bulk batches.
"""

from __future__ import annotations

from time import monotonic as now

from service import metrics
from service.neighbours import neighbours
from service.replies import send_json
from service.sojourn import Sojourn

PROBES = ("/livez", "/readyz", "/healthz", "/metrics", "/info", "/v2/health")


class RequestLimits:
    def __init__(self, app, max_body_bytes: int, max_in_flight: int, max_wait_s: float = 0,
                 retry_after_s: int = 1):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.sojourn = Sojourn(max_wait_s)
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(PROBES):
            return await self.app(scope, receive, send)
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return await self._reject(send, 503, f"server overloaded ({self.in_flight} requests "
                                      f"in progress in this worker); retry after "
                                      f"{self.retry_after.decode()} s")
        if self.sojourn.behind(self.in_flight, now()):
            waited = self.sojourn.last_min * 1000
            budget = self.sojourn.target_s * 1000
            return await self._reject(send, 503, f"server overloaded: requests in this worker "
                                      f"wait {waited:.0f} ms for their reply, over the "
                                      f"{budget:g} ms budget (CIFAR2_MAX_QUEUE_MS); retry "
                                      f"after {self.retry_after.decode()} s")
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return await self._too_large(send, length)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._buffer(receive)
            if body is None:
                return await self._too_large(send, None)
            receive = _replay(body)
        exchange = _Exchange(self, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            exchange.close()

    async def _buffer(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send, length: int | None) -> None:
        got = f"{length} bytes" if length is not None else "a larger body"
        mib = self.max_body_bytes / 2**20
        await self._reject(send, 413, f"request body too large: {got}, the limit is "
                           f"{self.max_body_bytes} bytes ({mib:g} MiB); send fewer images per "
                           "request or raise CIFAR2_MAX_BODY_MB")

    async def _reject(self, send, status: int, message: str) -> None:
        metrics.rejected("overloaded" if status == 503 else "body_too_large")
        headers = ((b"retry-after", self.retry_after),) if status == 503 else ()
        await send_json(send, status, {"error": message}, headers)


class _Exchange:
    """One request's receive and send through the limits. It counts as in progress once its
    body is in: a slow upload is not work yet, so 200 clients trickling bodies at a byte a
    second do not fill ``max_in_flight``. Its sojourn (last body byte to reply) is timed for
    service/sojourn.py when it is served: a 4xx is answered without waiting for anything, and a
    503 was turned away (it gets Retry-After)."""

    __slots__ = ("_receive", "_send", "body_done", "limits")

    def __init__(self, limits: RequestLimits, receive, send):
        self.limits, self._receive, self._send = limits, receive, send
        self.body_done: float | None = None

    async def receive(self):
        message = await self._receive()
        if self.body_done is None and not message.get("more_body", False):
            self.body_done = now()
            self.limits.in_flight += 1
            if self.limits.in_flight == 1:
                neighbours().mark(True)
        return message

    async def send(self, message):
        if message["type"] == "http.response.start":
            status = message["status"]
            if status == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", self.limits.retry_after))
                message = {**message, "headers": headers}
            elif status < 300 and self.body_done is not None:
                self.limits.sojourn.answered(self.body_done, now())
        await self._send(message)

    def close(self) -> None:
        if self.body_done is not None:
            self.limits.in_flight -= 1
            if self.limits.in_flight == 0:
                neighbours().mark(False)


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}
    return receive
