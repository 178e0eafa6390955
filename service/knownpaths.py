"""Paths the service does not serve: our JSON 404, before BentoML's app sees them.

    RequestLayer -> KnownPaths -> BentoML's app (metrics, tracing, timeout, /info, /ui, routes)
    pytest tests/test_unknown_paths.py        # the check, on a real `bentoml serve`

Why: BentoML's Prometheus middleware labels its series with the raw request path, so every
distinct unknown path added about 20 lines to /metrics for good: 5,000 of them made the page
18.9 MB (one GET 3.5 s) and the worker 218 MiB larger (docs/reliability.md, ``python -m
bench.reliability.faults --only paths``). They are answered here instead, and counted as one
series, ``cifar2_request_total{route="unknown",http_response_code="404"}``.

The served paths are read from BentoML's app when the worker builds it, so they cannot drift
from what it serves: its routes (exact paths; a route with parameters, by its regex), its mounts
(a static directory: each of its files, e.g. the Swagger page's /static_content/...; another
app: its prefix), and what our middlewares inside it answer (/info, the files of /ui). The
request layer's routes (/predict, /classify, /compare, everything under /v2) are answered in
front of this layer (service/frontdoor.py) and never reach it. A served path with the wrong
method goes through, to the 405 it always got. Per request: one set lookup, plus a regex or a
prefix only for routes with parameters or mounted apps (none in this service).

A path that is served only with a trailing slash added (``/livez/``) is not served: 404.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from service import info, metrics, webpage
from service.replies import Reply

logger = logging.getLogger("cifar2.service")

# Our middlewares inside BentoML's app (service/service.py): class -> the paths it answers,
# from the module that serves them (InfoRoute also answers /info/; WebPage redirects /ui/ to
# /ui), and how the 404 names them.
MIDDLEWARE_PATHS = {
    info.InfoRoute: (lambda: {info.PATH, info.PATH + "/"}, f"GET {info.PATH}"),
    webpage.WebPage: (lambda: {*webpage.load(), webpage.PATH + "/"},
                      f"open {webpage.PATH} for the web page"),
}
SHOWN_PATH = 100  # characters of the unknown path echoed in the reply


class KnownPaths:
    """ASGI middleware: requests to paths ``app`` serves go through; the rest get 404."""

    def __init__(self, app):
        self.app = app
        self.exact: set[str] = set()
        self.patterns: list[re.Pattern] = []
        self.prefixes: list[str] = []
        self.open = False  # something whose paths are unknown: let everything through
        routes = getattr(app, "routes", None) or []
        for route in routes:
            self._add_route(route)
        if not routes:
            self._unknown(f"app {type(app).__name__}, which has no routes")
        named = []
        for middleware in getattr(app, "user_middleware", []):
            if middleware.cls in MIDDLEWARE_PATHS:
                paths, name = MIDDLEWARE_PATHS[middleware.cls]
                self.exact |= paths()
                named.append(name)
            elif middleware.cls.__module__.startswith("service."):
                self._unknown(f"middleware {middleware.cls.__qualname__}")
        # The 404 names what exists: the plain routes by method, then the rest.
        plain = [r for r in routes if isinstance(r, Route) and not r.param_convertors]
        served = [f"{method} {', '.join(paths)}" for method in ("POST", "GET")
                  if (paths := sorted(r.path for r in plain if method in (r.methods or ())))]
        served += [*named, "the Open Inference Protocol under /v2"]
        if "/" in self.exact and "/docs.json" in self.exact:
            served.append("the API docs at / (/docs.json)")
        self.served = "this service serves " + "; ".join(served)
        self.prefixes = tuple(self.prefixes)

    def _add_route(self, route) -> None:
        if isinstance(route, (Route, WebSocketRoute)):
            if route.param_convertors:
                self.patterns.append(route.path_regex)
            else:
                self.exact.add(route.path)
        elif isinstance(route, Mount):  # BentoML's PassiveMount too
            static = route.app if isinstance(route.app, StaticFiles) else None
            if static is not None and not static.html and not static.follow_symlink:
                # StaticFiles answers each file under its directories, and 404 otherwise.
                for directory in static.all_directories:
                    self.exact |= {f"{route.path}/{p.relative_to(directory).as_posix()}"
                                   for p in _files(directory)}
            else:
                self.prefixes.append(route.path + "/")
        else:
            self._unknown(f"route {route!r}")

    def _unknown(self, what: str) -> None:
        logger.warning("unknown paths: cannot tell which paths %s serves; every path goes "
                       "through to BentoML (service/knownpaths.py)", what)
        self.open = True

    def serves(self, path: str) -> bool:
        return (path in self.exact or self.open or path.startswith(self.prefixes)
                or any(p.match(path) for p in self.patterns))

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket") or self.serves(scope["path"]):
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        if kind == "websocket":  # as Starlette's router closes one it has no route for
            await send({"type": "websocket.close", "code": 1000, "reason": ""})
        else:
            path = scope["path"]
            if len(path) > SHOWN_PATH:
                path = path[:SHOWN_PATH] + "..."
            reply = Reply.error(404, f"no route {scope['method']} {path}; {self.served}")
            await reply.send(send, scope["method"] == "HEAD")
        metrics.request_done("unknown", 404, time.perf_counter() - t0)
        return None


def _files(directory) -> list[Path]:
    return [p for p in sorted(Path(directory).rglob("*")) if p.is_file()]
