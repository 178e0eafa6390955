"""GET /info: what this server really runs: models, provider, batching, limits, versions.
And the other side of the same fact: while the service is not ready, API calls get 503.

ASGI middlewares rather than a mounted app: BentoML mounts apps under a prefix, so a mounted
app answers /info/ and redirects /info with a 307.
"""

from __future__ import annotations

import bentoml
from starlette.responses import JSONResponse

PATH = "/info"


class InfoRoute:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/") != PATH:
            return await self.app(scope, receive, send)
        service = bentoml.get_current_service()
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse({"error": "use GET /info"}, status_code=405)
        elif service is None:
            response = JSONResponse({"error": "service is starting"}, status_code=503)
        else:
            response = JSONResponse(service.describe())
        await response(scope, receive, send)


class ReadyGate:
    """POSTs while the models are not loaded get 503 with the reason, not a 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            service = bentoml.get_current_service()
            if service is None or not service.ready:
                reason = getattr(service, "error", None) or "starting"
                response = JSONResponse({"error": f"not ready: {reason}"}, status_code=503,
                                        headers={"Retry-After": "5"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)
