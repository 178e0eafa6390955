"""The ASGI app each worker serves: our limits, readiness gate and request layer in front of
BentoML's app.

    RequestLimits -> ReadyGate -> RequestLayer -> BentoML (metrics, tracing, timeout, /info,
                                                           IO layer, the @bentoml.api methods)

Why in front: on 2 CPU cores, BentoML's own middlewares cost more than the rest of a
single-image request together. Its Prometheus middleware makes five multiprocess writes and
label lookups per request, and its timeout middleware starts a task and a 60 s timer per
request. What they did for these requests is done here instead: service/metrics.py counts
them, the batcher has the timeout. service/routes.py says which routes the layer answers.

Built through ``@bentoml.service(service_class=FrontDoorService)``, BentoML's hook for a
Service subclass; ``bentoml serve`` and a built Bento call ``to_asgi`` in every worker.
"""

from __future__ import annotations

import bentoml

from service import config, drain, knownpaths, openapi
from service.info import ReadyGate
from service.limits import RequestLimits
from service.requestlog import RequestLog
from service.routes import RequestLayer


def front(app):
    """Wrap BentoML's ASGI app in our front middlewares (outermost first, as listed above)."""
    app = knownpaths.KnownPaths(app)  # unknown paths: our 404, before BentoML's metrics see them
    app = RequestLayer(app, fast_routes=config.FAST_PATH)
    app = drain.Drain(app)  # SIGTERM: readiness false, lame duck, finish in-flight (drain.py)
    return RequestLog(RequestLimits(ReadyGate(app), max_body_bytes=config.MAX_BODY_BYTES,
                                    max_in_flight=config.MAX_IN_FLIGHT))  # ids, error lines


class FrontDoorService(bentoml.Service):
    """A bentoml.Service whose ASGI app is ``front(BentoML's app)``, and whose OpenAPI document
    says what the front answers (service/openapi.py)."""

    def to_asgi(self, is_main: bool = True):
        return front(super().to_asgi(is_main))

    @property
    def openapi_spec(self):
        return openapi.openapi_spec(super().openapi_spec)
