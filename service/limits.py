"""Request limits BentoML 1.4 does not have: a body-size cap (413) and load shedding (503).

The checks run before anything parses the body:
- Content-Length above the cap -> 413 at once; a chunked body is counted as it comes in.
  Every body is read by service/bodies.py, which also times it: 408 for one that trickles.
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

Two ways in, one set of rules: the request layer (service/routes.py) checks its own routes
with the plain calls below, without wrapping each request's receive and send; the ASGI
middleware applies the same calls to every other path.
"""

from __future__ import annotations

from time import monotonic as now

from service import bodies, metrics
from service.neighbours import neighbours
from service.replies import Headers, Reply
from service.sojourn import Sojourn

PROBES = ("/livez", "/readyz", "/healthz", "/metrics", "/info", "/v2/health")


class RequestLimits:
    """The limits of one worker. ``covers``, ``refusal``, ``too_large``, ``started``,
    ``with_retry_after``, ``answered`` and ``finished`` are its plain calls: the request layer
    (service/routes.py) makes them for the routes it answers, and this class's ASGI middleware
    makes them around every other request."""

    def __init__(self, app, max_body_bytes: int, max_in_flight: int, max_wait_s: float = 0,
                 retry_after_s: int = 1):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = max_in_flight
        self.sojourn = Sojourn(max_wait_s)
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    @staticmethod
    def covers(path: str) -> bool:
        """Whether the limits apply: not to probes and metrics, which must answer under load."""
        return not path.startswith(PROBES)

    def refusal(self, scope) -> Reply | None:
        """The reply that turns this request away before its body is read (503: overloaded,
        413: Content-Length over the cap), or None to let it in. Counted in /metrics."""
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return self._overloaded(f"server overloaded ({self.in_flight} requests in progress "
                                    f"in this worker); retry after {self.retry_after.decode()} s")
        if self.sojourn.behind(self.in_flight, now()):
            waited = self.sojourn.last_min * 1000
            budget = self.sojourn.target_s * 1000
            return self._overloaded(f"server overloaded: requests in this worker wait "
                                    f"{waited:.0f} ms for their reply, over the {budget:g} ms "
                                    f"budget (CIFAR2_MAX_QUEUE_MS); retry after "
                                    f"{self.retry_after.decode()} s")
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return self.too_large(length)
        return None

    def too_large(self, length: int | None) -> Reply:
        """413 for a body over the cap (``length`` None: a chunked body, counted as it came)."""
        metrics.rejected("body_too_large")
        got = f"{length} bytes" if length is not None else "a larger body"
        mib = self.max_body_bytes / 2**20
        return Reply.error(413, f"request body too large: {got}, the limit is "
                           f"{self.max_body_bytes} bytes ({mib:g} MiB); send fewer images per "
                           "request or raise CIFAR2_MAX_BODY_MB")

    def _overloaded(self, message: str) -> Reply:
        metrics.rejected("overloaded")
        return Reply.error(503, message, [(b"retry-after", self.retry_after)])

    def started(self) -> float:
        """The request's body is in: it is work in progress from now. Returns the time, for
        ``answered``. A slow upload is not work yet, so 200 clients trickling bodies at a byte
        a second do not fill ``max_in_flight``."""
        self.in_flight += 1
        if self.in_flight == 1:
            neighbours().mark(True)
        return now()

    def with_retry_after(self, status: int, headers: Headers) -> Headers:
        """A 503's headers with Retry-After added when the app did not say (the batcher's
        admission control); other headers as they are."""
        if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
            return [*headers, (b"retry-after", self.retry_after)]
        return headers

    def answered(self, status: int, body_done: float) -> None:
        """A reply went out: a served one (2xx) is timed for service/sojourn.py; a 4xx is
        answered without waiting for anything, and a 503 was turned away."""
        if status < 300:
            self.sojourn.answered(body_done, now())

    def finished(self) -> None:
        """The request that ``started`` is over, answered or not."""
        self.in_flight -= 1
        if self.in_flight == 0:
            neighbours().mark(False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.covers(scope["path"]):
            return await self.app(scope, receive, send)
        refused = self.refusal(scope)
        if refused is not None:
            return await refused.send(send)
        if scope["method"] in ("POST", "PUT", "PATCH"):  # read here: capped and timed
            body, refused = await bodies.read_or_refusal(receive, self.max_body_bytes,
                                                         lambda: self.too_large(None))
            if refused is not None:
                return await refused.send(send)
            if body is None:  # the client left before sending it all
                return None
            receive = _replay(body, receive)
        exchange = _Exchange(self, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            if exchange.body_done is not None:
                self.finished()


class _Exchange:
    """One request's receive and send through the middleware: ``started`` when its body is
    in, ``answered`` when its reply starts, Retry-After on a 503."""

    __slots__ = ("_receive", "_send", "body_done", "limits")

    def __init__(self, limits: RequestLimits, receive, send):
        self.limits, self._receive, self._send = limits, receive, send
        self.body_done: float | None = None

    async def receive(self):
        message = await self._receive()
        if self.body_done is None and not message.get("more_body", False):
            self.body_done = self.limits.started()
        return message

    async def send(self, message):
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = message.get("headers", [])
            with_retry = self.limits.with_retry_after(status, headers)
            if with_retry is not headers:
                message = {**message, "headers": with_retry}
            if self.body_done is not None:
                self.limits.answered(status, self.body_done)
        await self._send(message)


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive):
    """``receive`` with the body already read given back in one message; after it, the
    connection's own receive again (it waits for the client to leave, as an app expects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay
