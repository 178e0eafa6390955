"""GET /info: what this server really runs (a small Starlette app mounted into the service)."""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def info(_request) -> JSONResponse:
    service = bentoml.get_current_service()
    if service is None:
        return JSONResponse({"error": "service is starting"}, status_code=503)
    return JSONResponse(service.describe())


app = Starlette(routes=[Route("/", info, methods=["GET"])])
