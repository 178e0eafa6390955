"""A JSON reply sent straight over ASGI, for the middlewares in front of BentoML's app.

Cheaper than building a Starlette Response on the hot .npy /predict path, and the one place
the limits, the readiness gate and the .npy lane write their replies.
"""

from __future__ import annotations

import json

_JSON = (b"content-type", b"application/json")


async def send_json(send, status: int, obj, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
