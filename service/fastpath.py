"""POST /predict with a raw .npy body, answered without BentoML's per-request IO layer.

Why: on 2 cores, BentoML's request pipeline (pydantic IO models, signature inspection,
CorkDispatcher polling, its middlewares) costs ~1 ms per request, ten times the model. The
binary form is the one programmatic clients use for speed, so it gets a lane that does only
what the request needs: read the body, validate it (service.tensors, the same checks), batch it
with the other requests in flight (service.batcher), answer JSON. It sits behind our limits
and readiness gate, in front of BentoML's app (service/frontdoor.py), so 413 and 503 behave the
same; its requests are counted in /metrics as cifar2_fast_predict_* (service/metrics.py). JSON
and multipart /predict requests, and every request when CIFAR2_FAST_NPY=off, take BentoML's
adaptive batching path instead; both give the same probabilities.
"""

from __future__ import annotations

import logging
import time

from bentoml import get_current_service

from service import metrics
from service.replies import send_json
from service.serde import NPY_MEDIA_TYPES
from service.tensors import parse_tensor

ROUTE = "/predict"
_NPY = tuple(t.encode() for t in NPY_MEDIA_TYPES)
logger = logging.getLogger("cifar2.service")


class NpyPredictRoute:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST"
                or not _is_npy(scope)):
            return await self.app(scope, receive, send)
        service = get_current_service()  # info.ReadyGate, further out, ensures ready
        t0 = time.perf_counter()
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, reply = await _answer(service, b"".join(body))
        await send_json(send, status, reply)
        metrics.fast_predict_done(status, time.perf_counter() - t0)
        return None


async def _answer(service, body: bytes) -> tuple[int, object]:
    """(HTTP status, JSON reply). In front of BentoML's error middleware, so nothing may escape."""
    try:
        images = parse_tensor(body)
    except ValueError as e:
        return 400, {"error": str(e)}
    try:
        probs, _ = await service.batchers["convnet"](images)
    except TimeoutError as e:
        return 504, {"error": str(e)}
    except Exception as e:  # the model failed: log it, answer JSON, keep serving
        logger.exception("/predict (.npy) failed")
        return 500, {"error": f"inference failed: {type(e).__name__}"}
    return 200, probs.tolist()


def _is_npy(scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value.split(b";")[0].strip() in _NPY
    return False
