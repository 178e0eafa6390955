"""Request ids and error logging: one line per failed request, the traceback only for faults.

    X-Request-ID: every reply carries one: the client's (printable ASCII, at most 128 chars)
                  or, when it sent none or an unusable one, a new one (16 hex digits).
    4xx           one WARNING line: method, route, status, the reason (the JSON error body's
                  "error", plus pydantic's first complaint when there is one), request id, ms.
    5xx           one ERROR line with the same fields; the traceback is logged once, by whoever
                  caught the exception (BentoML, the service, or this middleware as the last
                  stop), and carries the request id too.
    503           shedding and not-ready answers are load, not faults: WARNING, like a 4xx.

BentoML logs a full traceback at ERROR for client errors it turns into 400s (a pydantic
ValidationError, e.g. an unknown `model` value on /classify, or a BentoMLException with a 4xx
code); ``install()`` adds a filter on that logger which drops exactly those records, because the
4xx line written here already says what was wrong. Real faults (any other exception) still pass.

A flood of bad requests must not make the log the bottleneck: at most ``LINES_PER_S`` 4xx/503
lines a second per worker; the rest are counted and summed up in one line a second later. 5xx
faults other than 503 are never suppressed.

The outermost ASGI middleware in front of BentoML's app (service/frontdoor.py), so that it also
sees the 413s and 503s that the limits answer. The request layer (service/routes.py) does the
same for its own routes with ``begin``, ``RequestLog.replied``, ``unhandled`` and
``client_left``, without wrapping each request's receive and send.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import time

logger = logging.getLogger("cifar2.requests")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("cifar2_request_id",
                                                                        default=None)
LINES_PER_S = 50
ID_HEADER = b"x-request-id"
_MAX_ID = 128
_KEEP = 4096  # bytes of an error body kept to read its reason


# New request ids: 16 hex digits, a random per-process half and a counter half. Unique within a
# worker and, with 2^32 random prefixes, across replicas; no getrandom syscall per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"
# Where BentoML logs "Exception on /route [POST]" with the traceback (bentoml's log_exception).
BENTOML_EXCEPTION_LOGGER = "bentoml._internal.server.http_app"


class RequestLog:
    def __init__(self, app):
        self.app = app
        self._window = time.monotonic()
        self._lines = 0
        self._suppressed: dict[int, int] = {}
        install()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, token = begin(scope)
        t0 = time.perf_counter()
        state = {"status": None, "body": b"", "disconnected": False}

        async def receive_():
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            return message

        async def send_(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = message.get("headers") or []
                own = next((v for k, v in headers if k.lower() == ID_HEADER), None)
                if own is None:
                    message = {**message, "headers": [*headers, (ID_HEADER, rid.encode())]}
                else:  # the app chose the id (e.g. the V2 layer); log that one
                    state["rid"] = own.decode("latin-1")
            elif state["status"] and state["status"] >= 400 and len(state["body"]) < _KEEP:
                state["body"] += message.get("body", b"")[:_KEEP]
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except Exception:  # noqa: BLE001 - the last stop: logged once (unhandled), answered if we can
            unhandled(scope, state["status"], rid, t0)
            if state["status"] is None and not state["disconnected"]:
                await send_500(send, rid)
            return None
        finally:
            request_id.reset(token)
        status = state["status"]
        if status is None:
            # Nothing was sent: the client left before the reply (not a server fault), or the
            # app returned without answering, which is one.
            if state["disconnected"]:
                client_left(scope, rid)
            else:
                await send_500(send, rid)
                logger.error("%s %s 500 the app returned without a reply request_id=%s",
                             scope["method"], _clean(scope["path"]), rid)
        elif status >= 400:
            self.replied(scope, status, state["body"], state.get("rid", rid), t0)
        return None

    def replied(self, scope, status: int, body: bytes, rid: str, t0: float) -> None:
        """The line for an error reply (status >= 400; ``body`` its start), within budget."""
        if scope["path"].startswith(("/readyz", "/livez", "/healthz")) and status == 503:
            return  # a probe saying "not ready" is its job; the reason was logged at start
        fault = status >= 500 and status != 503
        if not fault and not self._budget(status):
            return
        logger.log(logging.ERROR if fault else logging.WARNING,
                   "%s %s %d %s request_id=%s ms=%.1f", scope["method"],
                   _clean(scope["path"]), status, _reason(body), rid,
                   (time.perf_counter() - t0) * 1e3)

    def _budget(self, status: int) -> bool:
        """True while this second's line budget lasts; count the rest and report them once."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self._suppressed:
                counts = ", ".join(f"{n} x {s}" for s, n in sorted(self._suppressed.items()))
                logger.warning("%d more error replies not logged in the last %.1f s (%s)",
                               sum(self._suppressed.values()), now - self._window, counts)
            self._window, self._lines, self._suppressed = now, 0, {}
        if self._lines < LINES_PER_S:
            self._lines += 1
            return True
        self._suppressed[status] = self._suppressed.get(status, 0) + 1
        return False


class ClientErrorTracebacks(logging.Filter):
    """Drops BentoML's traceback records for exceptions it answers with a 4xx."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not str(record.msg).startswith("Exception on"):
            return True
        exc = record.exc_info[1]
        if type(exc).__name__ == "ValidationError":  # pydantic's: BentoML answers 400
            return False
        code = getattr(getattr(exc, "error_code", None), "value", 500)
        return not (isinstance(code, int) and 400 <= code < 500)


class TagRequestId(logging.Filter):
    """Appends the request id to warnings and errors logged while a request is handled (e.g.
    BentoML's traceback for a 500), so the traceback and the request's line match."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if (rid and record.levelno >= logging.WARNING and record.name != logger.name
                and not getattr(record, "cifar2_tagged", False)):
            # msg is %-formatted only when there are args: then escape a client's '%'
            tag = rid.replace("%", "%%") if record.args else rid
            record.msg = f"{record.msg} request_id={tag}"
            record.cifar2_tagged = True
        return True


def install() -> None:
    """Attach the filters once per process (the workers' logging is configured by then)."""
    bento = logging.getLogger(BENTOML_EXCEPTION_LOGGER)
    if not any(isinstance(f, ClientErrorTracebacks) for f in bento.filters):
        bento.addFilter(ClientErrorTracebacks())
    handlers = {*logging.getLogger().handlers, *logging.getLogger("bentoml").handlers}
    for handler in handlers:
        if not any(isinstance(f, TagRequestId) for f in handler.filters):
            handler.addFilter(TagRequestId())
    quiet_dropped_access_lines()


def quiet_dropped_access_lines() -> None:
    """uvicorn formats an access line for every request (the client address, the quoted path)
    whenever its access logger has a handler anywhere up the tree, and only then asks the
    logger's level, which in BentoML's workers drops it (WARNING): ~1% of a worker's time at
    c=32 in a py-spy profile. A logger that would drop the line anyway is cut from the tree, so
    uvicorn does not build it; nothing that was logged before is lost."""
    access = logging.getLogger("uvicorn.access")
    if not access.isEnabledFor(logging.INFO) and not access.handlers:
        access.propagate = False


def begin(scope) -> tuple[str, contextvars.Token]:
    """The request's id (the client's, or a new one), set for the log records made while it
    is handled; ``request_id.reset(token)`` when it is done."""
    rid = _client_id(scope) or _new_id()
    return rid, request_id.set(rid)


def unhandled(scope, status: int | None, rid: str, t0: float) -> None:
    """Log an exception nothing else caught, once, with the id (inside ``except``)."""
    logger.exception("%s %s %d unhandled exception request_id=%s ms=%.1f", scope["method"],
                     _clean(scope["path"]), status or 500, rid, (time.perf_counter() - t0) * 1e3)


def client_left(scope, rid: str) -> None:
    logger.info("%s %s: client disconnected before the reply request_id=%s",
                scope["method"], _clean(scope["path"]), rid)


def _client_id(scope) -> str | None:
    for key, value in scope["headers"]:
        if key == ID_HEADER:
            text = value.decode("latin-1")
            if 0 < len(text) <= _MAX_ID and text.isascii() and text.isprintable() \
                    and " " not in text:
                return text
            return None
    return None


def _reason(body: bytes) -> str:
    """The error message of a reply body, quoted, on one line."""
    try:
        data = json.loads(body)
    except ValueError:
        return _quote(body.decode("utf-8", "replace"))
    if isinstance(data, list) and data:  # BentoML answers some 4xx with a one-element list
        data = data[0]
    if not isinstance(data, dict):
        return _quote(str(data))
    text = str(data.get("error") or data.get("detail") or data)
    detail = data.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # pydantic's
        where = ".".join(str(p) for p in detail[0].get("loc", ()))
        text = f"{text}: {where + ': ' if where else ''}{detail[0].get('msg', '')}"
    return _quote(text)


def _quote(text: str, limit: int = 300) -> str:
    return json.dumps(text[:limit] + ("..." if len(text) > limit else ""))


def _clean(path: str, limit: int = 200) -> str:
    """A client-chosen path, safe for one log line (no newlines or control characters)."""
    path = path[:limit]
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


async def send_500(send, rid: str) -> None:
    body = json.dumps({"error": f"internal server error; the server log has the details "
                                f"under request_id={rid}"}).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (ID_HEADER, rid.encode())]})
    await send({"type": "http.response.body", "body": body})
