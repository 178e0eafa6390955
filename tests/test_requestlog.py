"""Request ids and error logging (service/requestlog.py), over real HTTP.

The first tests run `bentoml serve` (tests/test_service_http.py's store and launcher) and read
its log: every reply has an X-Request-ID, a client error is one WARNING line with the reason
and the id, and BentoML's traceback for a client error is gone. The 5xx tests put the
middleware in front of apps that fail, under a real uvicorn, since the service has no
legitimate way to fail on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from test_service_http import (  # store is a fixture
    files,
    free_port,
    png,
    server_env,
    start_server,
    stop,
    store,  # noqa: F401
)

from service.requestlog import BENTOML_EXCEPTION_LOGGER, RequestLog


@pytest.fixture(scope="module", params=["on", "off"], ids=["request-layer", "bentoml-path"])
def served(store, tmp_path_factory, request):
    """The server with its own request layer, and with CIFAR2_FAST_PATH=off, where BentoML's
    IO layer decodes the requests (and used to log a traceback for each client error)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = server_env(store, CIFAR2_MAX_IMAGES="4", CIFAR2_FAST_PATH=request.param)
    proc, url = start_server(env, free_port(), log)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client, log
    stop(proc)


def lines_with(log, rid: str, timeout: float = 15.0) -> list[str]:
    """The log lines that name request id ``rid`` (waits for the worker's output to land)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in log.read_text().splitlines() if f"request_id={rid}" in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_every_reply_carries_a_request_id(served):
    client, _ = served
    seen = set()
    for method, path, kwargs in [("GET", "/readyz", {}), ("GET", "/livez", {}),
                                 ("GET", "/info", {}), ("GET", "/metrics", {}),
                                 ("GET", "/no-such-route", {}),
                                 ("POST", "/classify", {"files": files(png())}),
                                 ("POST", "/predict", {"json": {"images": []}})]:
        r = client.request(method, path, **kwargs)
        rid = r.headers.get("x-request-id")
        assert rid and re.fullmatch(r"[0-9a-f]{16}", rid), (path, r.headers)
        seen.add(rid)
    assert len(seen) == 7  # a new one each time

    r = client.post("/classify", files=files(png()), headers={"X-Request-ID": "client-id-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-42"
    # An id that cannot be echoed safely (too long, or with spaces) is replaced by a new one.
    for bad in ("x" * 129, "two words"):
        r = client.get("/livez", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])


CLIENT_ERRORS = [
    # (path, request kwargs, status, words the log line must have)
    ("/classify", {"files": files(png()), "data": {"model": "resnet"}}, 400,
     ["model", "'convnet' or 'dense'"]),  # pydantic: BentoML used to log a traceback
    ("/predict", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, ["JSON"]),
    ("/predict", {"content": b"not numpy", "headers": {"content-type": "application/x-npy"}},
     400, ["NUMPY"]),
    ("/classify", {"files": files(*[png()] * 5)}, 413, ["limit is 4"]),
    ("/predict", {"content": b"\0" * (16 * 2**20 + 1),
                  "headers": {"content-type": "application/x-npy"}}, 413, ["16 MiB"]),
]


@pytest.mark.parametrize("path, kwargs, status, words", CLIENT_ERRORS)
def test_a_client_error_is_one_warning_line_without_traceback(served, path, kwargs, status,
                                                              words):
    client, log = served
    rid = f"t-{status}-{uuid.uuid4().hex[:12]}"
    rest = {k: v for k, v in kwargs.items() if k != "headers"}  # the params are shared
    r = client.post(path, headers={"X-Request-ID": rid, **kwargs.get("headers", {})}, **rest)
    assert r.status_code == status, r.text
    assert r.headers["x-request-id"] == rid
    found = lines_with(log, rid)
    assert len(found) == 1, found
    line = found[0]
    assert "[WARNING]" in line and f"POST {path} {status} " in line, line
    for word in words:
        assert word in line, (word, line)
    assert "Traceback" not in log.read_text()
    assert "Exception on" not in log.read_text()


def test_success_is_not_logged(served):
    client, log = served
    r = client.post("/classify", files=files(png()), headers={"X-Request-ID": "quiet-ok"})
    assert r.status_code == 200
    client.get("/livez")  # something after it, so the log has had time to land
    time.sleep(0.5)
    assert lines_with(log, "quiet-ok", timeout=0) == []


# --- 5xx: the middleware in front of apps that fail, under a real uvicorn ---

async def raises_before_reply(scope, receive, send):
    raise RuntimeError("boom before the reply")


async def replies_500_then_raises(scope, receive, send):
    """What Starlette's ServerErrorMiddleware does: send a 500, then re-raise."""
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Internal Server Error"})
    raise RuntimeError("boom after the reply")


async def bentoml_style(scope, receive, send):
    """BentoML's API wrapper: log the exception on its logger, answer JSON itself."""
    from pydantic import BaseModel, ValidationError

    class Input(BaseModel):
        model: int

    try:
        Input.model_validate({"model": "resnet"})
    except ValidationError:
        logging.getLogger(BENTOML_EXCEPTION_LOGGER).exception("Exception on /x [POST]")
    status = 400 if scope["path"] == "/client" else 500
    if status == 500:
        try:
            raise KeyError("a real fault")
        except KeyError:
            logging.getLogger(BENTOML_EXCEPTION_LOGGER).exception("Exception on /x [POST]")
    body = b'{"error": "1 validation error for Input"}' if status == 400 else \
        b'{"error": "An unexpected error has occurred, please check the server log."}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def uvicorn_app():
    """``serve(app) -> base url``: RequestLog(app) under uvicorn in a thread, on a free port."""
    servers = []

    def serve(app) -> str:
        port = free_port()
        config = uvicorn.Config(RequestLog(app), port=port, log_level="warning",
                                lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(5)


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("app", [raises_before_reply, replies_500_then_raises])
def test_an_unhandled_exception_is_logged_once_with_the_id(uvicorn_app, caplog, app):
    url = uvicorn_app(app)
    with caplog.at_level(logging.INFO):
        r = httpx.post(f"{url}/predict", headers={"X-Request-ID": "fault-1"}, timeout=10)
        time.sleep(0.2)
    assert r.status_code == 500 and r.headers["x-request-id"] == "fault-1"
    if app is raises_before_reply:  # nothing was sent yet: we answer, in JSON, with the id
        assert "fault-1" in r.json()["error"]
    records = tracebacks(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert "request_id=fault-1" in records[0].getMessage()
    assert "POST /predict 500" in records[0].getMessage()


def test_bentoml_tracebacks_only_for_faults_and_tagged(uvicorn_app, caplog):
    url = uvicorn_app(bentoml_style)
    with caplog.at_level(logging.INFO):
        client = httpx.post(f"{url}/client", headers={"X-Request-ID": "bento-400"}, timeout=10)
        fault = httpx.post(f"{url}/fault", headers={"X-Request-ID": "bento-500"}, timeout=10)
        time.sleep(0.2)
    assert (client.status_code, fault.status_code) == (400, 500)
    records = tracebacks(caplog)
    # The ValidationError behind the 400 is dropped; the KeyError behind the 500 stays, and
    # carries the request id (TagRequestId, on the handlers present when the app was built).
    assert [type(r.exc_info[1]).__name__ for r in records] == ["KeyError"]
    assert records[0].getMessage().endswith("request_id=bento-500")
    lines = [r.getMessage() for r in caplog.records if r.name == "cifar2.requests"]
    assert any("POST /client 400" in m and "request_id=bento-400" in m for m in lines), lines
    assert any("POST /fault 500" in m and "request_id=bento-500" in m for m in lines), lines
    errors = [r for r in caplog.records if r.name == "cifar2.requests" and "500" in r.getMessage()]
    assert all(r.levelno == logging.ERROR for r in errors)


@pytest.mark.parametrize("level, quiet", [(logging.WARNING, True), (logging.INFO, False)])
def test_uvicorn_builds_no_access_line_that_would_be_dropped(level, quiet, monkeypatch):
    """uvicorn formats an access line per request whenever its logger has a handler up the
    tree; a logger whose level drops them is cut from the tree, one that would log is kept."""
    from service.requestlog import quiet_dropped_access_lines

    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "level", level)
    access.manager._clear_cache()  # isEnabledFor caches per level
    quiet_dropped_access_lines()
    assert access.hasHandlers() is not quiet  # what uvicorn asks, once per connection
    access.manager._clear_cache()
