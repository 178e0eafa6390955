"""The ceiling for bench/bench_http.py: a bare ASGI app on uvicorn that decodes each request
exactly as the service does, and has no framework, no batcher and no model.

Like for like: it reads the body and runs the service's own decoder for the route
(service/routes.py: JSON or .npy /predict, the multipart image form of /classify and /compare,
the V2 infer header and tensor), then answers a fixed 2-class JSON reply. So the gap between it
and the service is what serving costs beyond HTTP and decoding: batching, the model, the reply,
BentoML. Run by the benchmark, or by hand:

    python -m bench.raw_asgi --port 3999 --workers 2
    python -m bench.raw_asgi --port 3999 --workers 2 --one-write

Plain, it is stock uvicorn, which writes each reply's headers and body in two send() calls.
With --one-write it sends them in one, as the service's workers do (service/onewrite.py): the
ceiling of the same HTTP stack the service runs on.
"""

from __future__ import annotations

import argparse
import os

from service import config, onewrite, routes, v2
from service.errors import BadInput

REPLY = b"[[0.5,0.5]]"
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]
ONE_WRITE = "RAW_ASGI_ONE_WRITE"  # set by --one-write, read by each uvicorn worker process

if os.environ.get(ONE_WRITE) == "1":
    onewrite.install()


async def decode(path: str, request: routes.Request):
    """The service's decoder for ``path``: uint8 [N,3,32,32] (or None for an unknown path)."""
    if path == "/predict":
        return routes.predict_images(request)
    if path in ("/classify", "/compare"):
        return (await routes.form_images(request))[1]
    if path.startswith("/v2/"):
        return v2.decode_infer(request.body, request.header(v2.HEADER_LENGTH, None),
                               config.MAX_IMAGES).images
    return None


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status = 200
    if scope["method"] == "POST":  # anything else is the benchmark asking if it is up
        try:
            await decode(scope["path"], routes.Request(scope, b"".join(chunks)))
        except BadInput:
            status = 400
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": REPLY})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3999)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--one-write", action="store_true",
                        help="headers and body in one send(), as the service's workers")
    args = parser.parse_args()
    os.environ[ONE_WRITE] = "1" if args.one_write else "0"
    uvicorn.run("bench.raw_asgi:app", port=args.port, workers=args.workers, access_log=False,
                log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
