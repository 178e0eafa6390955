"""The request layer's routes get the front's checks as plain calls (service/routes.py), not
through the middlewares: the same answers as those give every other path, in-process.

Real ASGI app (service/frontdoor.wrap), real batcher, a stand-in model; over real HTTP the
same routes are tested in test_service_http.py, test_v2_http.py and test_requestlog.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import numpy as np
import pytest
from conftest import npy

from service import config, drain, frontdoor, info, routes
from service.batcher import MicroBatcher

NPY = {"content-type": "application/x-npy"}
ONE = npy(np.zeros((1, 3, 32, 32), np.uint8))


class Served:
    """The running service, as far as /predict needs it: ready, one batcher."""

    ready = True

    def __init__(self, model, max_queue_ms: float = 0):
        self.batchers = {"convnet": MicroBatcher(model, max_batch=64, inline_max=0,
                                                 max_queue_ms=max_queue_ms)}


def halves(x):
    p = np.full((len(x), 2), 0.5, np.float32)
    return p, p


async def not_found(scope, receive, send):  # what is behind the checks: not reached here
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def front(monkeypatch):
    """``front(service) -> (app, limits)``: the worker's stack with a small body cap and
    in-flight limit, in front of nothing, serving ``service``."""
    monkeypatch.setattr(config, "MAX_BODY_BYTES", 10_000)
    monkeypatch.setattr(config, "MAX_IN_FLIGHT", 2)
    logging.getLogger("cifar2.service").setLevel(logging.ERROR)  # "not_found has no routes"

    def make(service):
        for module in (routes, info):
            monkeypatch.setattr(module, "get_current_service", lambda: service)
        app = frontdoor.wrap(not_found)
        return app, app.limits
    return make


def post(app, *requests):
    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            return await asyncio.gather(*(c.post(path, **kw) for path, kw in requests))
    return asyncio.run(run())


def test_overload_is_refused_with_retry_after_and_recovers(front):
    def slow(x):  # in the batcher's thread (inline_max=0)
        time.sleep(0.3)
        return halves(x)

    app, limits = front(Served(slow))

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/predict", content=ONE, headers=NPY))
                    for _ in range(2)]
            await asyncio.sleep(0.1)  # both in progress, in their model call
            refused = await c.post("/predict", content=ONE, headers=NPY)
            return refused, await asyncio.gather(*held), await c.post(
                "/predict", content=ONE, headers=NPY)

    refused, held, after = asyncio.run(run())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "2 requests in progress" in refused.json()["error"]
    assert re.fullmatch(r"[0-9a-f]{16}", refused.headers["x-request-id"])
    assert [r.status_code for r in held] == [200, 200] and after.status_code == 200
    assert after.headers["x-batch-size"] == "1" and "retry-after" not in after.headers
    assert limits.in_flight == 0  # every request that started has finished


def test_body_cap_by_content_length_and_by_a_chunked_body(front):
    app, limits = front(Served(halves))

    async def chunks():
        for _ in range(5):
            yield b"x" * 3000

    by_length, chunked, fine = post(app, ("/predict", {"content": b"x" * 10_001, "headers": NPY}),
                                    ("/predict", {"content": chunks(), "headers": NPY}),
                                    ("/predict", {"content": ONE, "headers": NPY}))
    assert by_length.status_code == 413 and "10001 bytes" in by_length.json()["error"]
    assert chunked.status_code == 413 and "limit is 10000 bytes" in chunked.json()["error"]
    assert fine.status_code == 200 and limits.in_flight == 0


def test_the_batchers_own_503_gets_retry_after(front):
    app, _ = front(Served(halves, max_queue_ms=1))
    served = routes.get_current_service()
    served.batchers["convnet"].queued_images = 10_000  # a backlog far over 1 ms
    served.batchers["convnet"].ms_per_image = 1.0
    (r,) = post(app, ("/predict", {"content": ONE, "headers": NPY}))
    assert r.status_code == 503 and "CIFAR2_MAX_QUEUE_MS" in r.json()["error"]
    assert r.headers["retry-after"] == "1"


def test_not_ready_and_draining(front, monkeypatch):
    app, _ = front(None)
    (r,) = post(app, ("/predict", {"content": ONE, "headers": NPY}))
    assert r.status_code == 503 and r.json()["error"] == "not ready: starting"
    assert r.headers["retry-after"] == "5"

    app, _ = front(Served(halves))
    monkeypatch.setattr(drain.STATE, "draining", True)

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            return (await c.get("/v2/health/ready"),
                    await c.post("/predict", content=ONE, headers=NPY))
    ready, served = asyncio.run(run())
    assert ready.status_code == 503 and "draining" in ready.json()["error"]
    assert served.status_code == 200 and served.headers["connection"] == "close"
    assert drain.STATE.in_flight == 0


def test_a_client_error_is_logged_once_with_its_id(front, caplog):
    app, _ = front(Served(halves))
    with caplog.at_level(logging.WARNING, logger="cifar2.requests"):
        (r,) = post(app, ("/predict", {"content": b"not numpy", "headers": {
            **NPY, "x-request-id": "lane-400"}}))
    assert r.status_code == 400 and r.headers["x-request-id"] == "lane-400"
    lines = [m for m in caplog.messages if "request_id=lane-400" in m]
    assert len(lines) == 1 and lines[0].startswith("POST /predict 400 ") and "NUMPY" in lines[0]
