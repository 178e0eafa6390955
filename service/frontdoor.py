"""The ASGI app each worker serves: the request layer, then our checks in front of BentoML's app.

    RequestLayer    every inference route and encoding, V2 (service/routes.py); its routes
                    go no further, and get the checks below as plain calls, in one lane
    RequestLog      request ids, one log line per error reply (service/requestlog.py)
    ReadyGate       503 until the models are loaded (service/info.py), before a body is read
    RequestLimits   413 body cap, 503 load shedding before the body is read (service/limits.py)
    Drain           SIGTERM: readiness false, lame duck, finish in-flight (service/drain.py)
    KnownPaths      JSON 404 for paths nobody serves (service/knownpaths.py)
    BentoML's app   metrics, tracing, timeout, /info, /ui, probes, the @bentoml.api methods

Why in front: on 2 CPU cores, BentoML's own middlewares cost more than the rest of a
single-image request together. Its Prometheus middleware makes five multiprocess writes and
label lookups per request, and its timeout middleware starts a task and a 60 s timer per
request. What they did for these requests is done here instead: service/metrics.py counts
them, the batcher has the timeout. service/routes.py says which routes the layer answers.

Why one lane for the inference routes: as four middlewares, each wrapping every request's
receive and send, the checks cost ~7 us of CPU a request, a sixth of a single-image request
in-process (``python -m bench.asgi_path``). The same objects serve both ways: one
RequestLimits counts every request of the worker, one RequestLog budgets every log line.

Below them all, each worker's uvicorn sends every reply's headers and body in one write
(service/onewrite.py, installed by ``front``).

Built through ``@bentoml.service(service_class=FrontDoorService)``, BentoML's hook for a
Service subclass; ``bentoml serve`` and a built Bento call ``to_asgi`` in every worker.
"""

from __future__ import annotations

import bentoml

from service import config, drain, knownpaths, onewrite, openapi
from service.info import ReadyGate
from service.limits import RequestLimits
from service.requestlog import RequestLog
from service.routes import RequestLayer


def wrap(app, checks: bool = True):
    """``app`` behind our layers (outermost first, as listed above). ``checks=False`` leaves
    out everything but the request layer: bench/asgi_path.py measures what the checks cost."""
    if not checks:
        return RequestLayer(app, fast_routes=config.FAST_PATH)
    limits = RequestLimits(drain.Drain(knownpaths.KnownPaths(app)),
                           max_body_bytes=config.MAX_BODY_BYTES,
                           max_in_flight=config.MAX_IN_FLIGHT,
                           max_wait_s=config.MAX_QUEUE_MS / 1000)
    # The gate before the limits: they read a POST's body (capped and timed), and a server
    # that is not ready refuses it without reading up to CIFAR2_MAX_BODY_MB first.
    log = RequestLog(ReadyGate(limits))
    return RequestLayer(log, fast_routes=config.FAST_PATH, log=log, limits=limits)


def front(app):
    """Wrap BentoML's ASGI app in our layers."""
    onewrite.install()  # this worker's replies leave in one write each (service/onewrite.py)
    return wrap(app)


class FrontDoorService(bentoml.Service):
    """A bentoml.Service whose ASGI app is ``front(BentoML's app)``, and whose OpenAPI document
    says what the front answers (service/openapi.py)."""

    def to_asgi(self, is_main: bool = True):
        return front(super().to_asgi(is_main))

    @property
    def openapi_spec(self):
        return openapi.openapi_spec(super().openapi_spec)
