"""Unknown paths get our JSON 404 and leave /metrics as it was (service/knownpaths.py); every
served path still answers as before.

    pytest tests/test_unknown_paths.py

BentoML's metrics middleware labels its series with the raw request path, so before
service/knownpaths.py each distinct unknown path added about 20 lines to /metrics for good.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from test_service_http import metric, server, store  # noqa: F401 (fixtures)

from service.knownpaths import KnownPaths


def settled_metrics(server) -> str:
    """/metrics once the requests before have been written (a worker writes within 50 ms)."""
    before, page = None, server.get("/metrics").text
    while before != page:
        time.sleep(0.2)
        before, page = page, server.get("/metrics").text
    return page


def test_unknown_paths_get_a_json_404_naming_what_exists(server):
    for method, path in [("GET", "/no-such-page"), ("GET", "/predict/x"), ("GET", "/info/x"),
                         ("GET", "/livez/"), ("GET", "/static_content/nope.js"),
                         ("GET", "/ui/nope.js"), ("POST", "/no-such-page"),
                         ("GET", "/%2e%2e/etc/passwd")]:
        r = server.request(method, path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", path
        error = r.json()["error"]
        assert error.startswith(f"no route {method} "), error
        for served in ("/classify", "/predict", "/v2", "/docs.json", "open /ui"):
            assert served in error, (served, error)
    head = server.head("/no-such-page")
    assert head.status_code == 404 and head.content == b""


def test_distinct_unknown_paths_do_not_grow_metrics(server):
    tag = uuid.uuid4().hex[:8]
    server.get(f"/no-such-page-{tag}")  # the first one may add the series route="unknown"
    page0 = settled_metrics(server)
    count0 = metric(server, "cifar2_request_total", route="unknown", http_response_code="404")
    for k in range(500):
        assert server.get(f"/no-such-page-{tag}-{k}").status_code == 404
    page1 = settled_metrics(server)
    assert tag not in page1  # no series is labelled with the path
    # The same series with larger numbers: a few digits, not ~20 lines per path (before the fix
    # 500 paths added ~1.5 MB).
    assert len(page1) - len(page0) < 2_000, (len(page0), len(page1))
    count1 = metric(server, "cifar2_request_total", route="unknown", http_response_code="404")
    assert count1 - count0 == 500  # counted, under one label


def test_served_paths_still_answer(server):
    page = server.get("/")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    # the Swagger page's own files, as the page names them
    assets = sorted(set(re.findall(r'"\.?/?(static_content/[^"?#]+)"', page.text)))
    assert len(assets) >= 3, page.text[:2000]
    for path in ["/" + a for a in assets] + [
            "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz", "/info",
            "/ui", "/ui/app.js", "/ui/samples/samples.json", "/metrics?name=x",
            "/v2", "/v2/health/live", "/v2/models/convnet", "/v2/models/dense/ready"]:
        r = server.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert server.get("/ui/").status_code == 308  # the page's own redirect, as before
    assert server.post("/predict", json={"images": []}).status_code == 400  # the route's own
    # A wrong method on a served path: the 405 it got before, not a 404.
    for method, path in [("GET", "/predict"), ("GET", "/classify"), ("PUT", "/compare"),
                         ("POST", "/livez"), ("POST", "/docs.json"), ("DELETE", "/info"),
                         ("POST", "/ui"), ("GET", "/v2/models/convnet/infer")]:
        assert server.request(method, path).status_code == 405, (method, path)


def test_paths_are_read_from_the_app_routes_and_mounts():
    """Without a server: exact routes, routes with parameters, and a mounted app's prefix."""
    async def ok(request):
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/{anything:path}", ok)])
    app = KnownPaths(Starlette(routes=[Route("/a", ok), Route("/items/{n:int}", ok),
                                       Mount("/sub", app=inner)]))

    async def get_all(paths):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [await client.get(p) for p in paths]

    served, unknown = ["/a", "/items/3", "/sub/x/y"], ["/b", "/items/x", "/subx", "/a/b"]
    replies = asyncio.run(get_all(served + unknown))
    assert [r.status_code for r in replies] == [200] * 3 + [404] * 4
    for path, r in zip(unknown, replies[3:]):
        assert r.json()["error"].startswith(f"no route GET {path}; this service serves GET /a;")
