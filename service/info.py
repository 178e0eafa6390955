"""GET /info: what this server really runs: models, provider, batching, limits, versions.
And the other side of the same fact: while the service is not ready, API calls get 503.

ASGI middlewares rather than a mounted app: BentoML mounts apps under a prefix, so a mounted
app answers /info/ and redirects /info with a 307.
"""

from __future__ import annotations

from bentoml import get_current_service
from starlette.responses import JSONResponse

from service import metrics
from service.replies import Reply

PATH = "/info"


class InfoRoute:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/") != PATH:
            return await self.app(scope, receive, send)
        service = get_current_service()
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse({"error": "use GET /info"}, status_code=405)
        elif service is None:
            response = JSONResponse({"error": "service is starting"}, status_code=503)
        else:
            response = JSONResponse(service.describe())
        await response(scope, receive, send)


def not_ready(scope) -> Reply | None:
    """503 with the reason for a POST while the models are not loaded (not a 500), else None.
    The request layer (service/routes.py) asks this for its routes; ReadyGate for the rest."""
    if scope["method"] != "POST":
        return None
    service = get_current_service()
    if service is not None and service.ready:
        return None
    metrics.rejected("not_ready")
    reason = getattr(service, "error", None) or "starting"
    return Reply.error(503, f"not ready: {reason}", [(b"retry-after", b"5")])


class ReadyGate:
    """``not_ready`` as an ASGI middleware, in front of BentoML's app (service/frontdoor.py)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = not_ready(scope)
            if refused is not None:
                return await refused.send(send)
        return await self.app(scope, receive, send)
