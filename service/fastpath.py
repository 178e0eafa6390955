"""POST /predict with a raw .npy body, answered without BentoML's per-request IO layer.

Why: on 2 cores, BentoML's request pipeline (pydantic IO models, signature inspection,
CorkDispatcher polling) costs ~1 ms per request, ten times the model. The binary form is the
one programmatic clients use for speed, so it gets a lane that does only what the request
needs: read the body, validate it (service.tensors, the same checks), batch it with the other
requests in flight (service.batcher), answer JSON. It sits inside BentoML's metrics, timeout
and our limits middlewares, so /metrics, 413 and 503 behave the same. JSON and multipart
/predict requests, and every request when CIFAR2_FAST_NPY=off, take BentoML's adaptive
batching path instead; both give the same probabilities.
"""

from __future__ import annotations

import json

import bentoml

from service.serde import NPY_MEDIA_TYPES
from service.tensors import parse_tensor

ROUTE = "/predict"
_NPY = tuple(t.encode() for t in NPY_MEDIA_TYPES)
_JSON = [(b"content-type", b"application/json")]


class NpyPredictRoute:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST"
                or not _is_npy(scope)):
            return await self.app(scope, receive, send)
        service = bentoml.get_current_service()  # info.ReadyGate, further out, ensures ready
        body, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            images = parse_tensor(b"".join(body))
        except ValueError as e:
            return await _reply(send, 400, {"error": str(e)})
        probs, _ = await service.batchers["convnet"](images)
        return await _reply(send, 200, probs.tolist())


def _is_npy(scope) -> bool:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return value.split(b";")[0].strip() in _NPY
    return False


async def _reply(send, status: int, obj) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
