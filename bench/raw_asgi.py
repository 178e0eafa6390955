"""The ceiling for bench/bench_http.py: a bare ASGI app on uvicorn, no framework, no model.

It reads the whole request body and answers every POST with a fixed 2-class JSON reply, so it
costs what the HTTP stack costs and nothing else. Run by the benchmark, or by hand:

    python -m bench.raw_asgi --port 3999 --workers 1
"""

from __future__ import annotations

import argparse

REPLY = b"[[0.5,0.5]]"
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to set up
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        return
    more = True
    while more:  # drain the body like a real handler would
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": REPLY})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3999)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run("bench.raw_asgi:app", port=args.port, workers=args.workers, access_log=False,
                log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
