"""CPU cost of one request through the worker's ASGI stack, in-process, without sockets.

    python -m bench.asgi_path [--batch 16] [--rounds 2000] [--body v2bin1]

Over HTTP on two shared cores the run-to-run noise (±5-10% of a req/s figure) hides changes of
a few microseconds. Here the same request goes straight into the ASGI app that a worker serves
(service/frontdoor.py: the front middlewares, the request layer, the batcher and the model, as
registered in the local BentoML store), ``--batch`` requests at a time so that they share a
model call as at c=32 over two workers, on one core with uvloop. Each variant leaves out one
front middleware, to show what each costs; "request layer" is service/routes.py alone. Prints
a table of microseconds of CPU per request (median of --repeat runs), and the model call's
share: the batcher's own average time per image (service/batcher.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.bench_http import ROUTES, bodies


async def not_found(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


STACKS = ("worker's stack", "request layer alone")


def build(stack: str):
    """service/frontdoor.front's stack, or its request layer without the checks."""
    from service import frontdoor

    return frontdoor.wrap(not_found, checks=stack == STACKS[0])


def scope_for(path: str, body: bytes, ctype: str, extra: str) -> dict:
    headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode()),
               (b"content-type", ctype.encode())]
    if extra:
        name, value = extra.split(": ", 1)
        headers.append((name.lower().encode(), value.encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "server": ("127.0.0.1", 3000),
            "client": ("127.0.0.1", 50000)}


async def measure(app, scope: dict, body: bytes, batch: int, rounds: int) -> tuple[float, dict]:
    statuses: dict[int, int] = {}

    async def one() -> None:
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1
        await app(dict(scope), receive, send)

    for _ in range(max(50, rounds // 10)):  # warm: ORT's arena, caches, the batcher's average
        await asyncio.gather(*(one() for _ in range(batch)))
    statuses.clear()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(rounds):
        await asyncio.gather(*(one() for _ in range(batch)))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return cpu / (rounds * batch) * 1e6, statuses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body", default="v2bin1", choices=sorted(ROUTES))
    p.add_argument("--batch", type=int, default=16, help="requests arriving together")
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--full-only", action="store_true",
                   help="only the whole stack (for an A/B of two checkouts)")
    args = p.parse_args(argv)
    os.environ.setdefault("CIFAR2_ORT_THREADS", "1")
    from _bentoml_sdk.service import set_current_service

    from service.service import CIFAR2

    service = CIFAR2.inner()
    if not service.ready:
        print(f"error: the service is not ready: {service.error}", file=sys.stderr)
        return 2
    set_current_service(service)
    # KnownPaths warns that a bare inner app lists no routes: true here, and not the point.
    logging.getLogger("cifar2.service").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path, ctype, _ = bodies(Path(tmp))[args.body]
        body = path.read_bytes()
        sidecar = path.with_suffix(".header")
        extra = sidecar.read_text().strip() if sidecar.is_file() else ""
    scope = scope_for(ROUTES[args.body], body, ctype, extra)
    print(f"{args.body} ({ROUTES[args.body]}), {args.batch} requests at a time, "
          f"{args.rounds} rounds, median of {args.repeat}\n")
    print("| stack | µs CPU per request | difference |\n| --- | ---: | ---: |")
    full = None
    for stack in STACKS[:1] if args.full_only else STACKS:
        runs = [uvloop.run(measure(build(stack), scope, body, args.batch, args.rounds))
                for _ in range(args.repeat)]
        us = statistics.median(r[0] for r in runs)
        bad = {s: n for r in runs for s, n in r[1].items() if s != 200}
        if bad:
            print(f"error: replies other than 200: {bad}", file=sys.stderr)
            return 1
        full = us if full is None else full
        print(f"| {stack} | {us:.1f} | {us - full:+.1f} |")
    # The batcher's own moving average of a model call (ORT's run, per image), and its batches.
    model = "dense" if "dense" in ROUTES[args.body] else "convnet"
    stats = service.batchers[model].stats()
    print(f"\nmodel call ({model}, the batcher's average): {stats['ms_per_image'] * 1000:.1f} us "
          f"per image, {stats['requests'] / stats['calls']:.1f} requests per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
