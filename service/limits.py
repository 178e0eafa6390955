"""Request limits BentoML 1.4 does not have: a body-size cap (413) and load shedding (503).

An ASGI middleware, so the checks run before BentoML parses anything:
- Content-Length above the cap -> 413 at once; a chunked body is counted as it is buffered.
- More requests in progress in this worker than ``max_in_flight`` -> 503 with Retry-After, so
  an overloaded server answers fast instead of letting clients time out.
- Any 503 the app itself sends (BentoML's batch queue shedding) gets a Retry-After header too.
"""

from __future__ import annotations

from service import metrics
from service.replies import send_json

PROBES = ("/livez", "/readyz", "/healthz", "/metrics", "/info", "/v2/health")


class RequestLimits:
    def __init__(self, app, max_body_bytes: int, max_in_flight: int, retry_after_s: int = 1):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(PROBES):
            return await self.app(scope, receive, send)
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return await self._reject(send, 503, f"server overloaded ({self.in_flight} requests "
                                      f"in progress in this worker); retry after "
                                      f"{self.retry_after.decode()} s")
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return await self._too_large(send, length)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._buffer(receive)
            if body is None:
                return await self._too_large(send, None)
            receive = _replay(body)
        self.in_flight += 1
        try:
            await self.app(scope, receive, self._add_retry_after(send))
        finally:
            self.in_flight -= 1

    def _add_retry_after(self, send):
        async def wrapped(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", self.retry_after))
                message = {**message, "headers": headers}
            await send(message)
        return wrapped

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
