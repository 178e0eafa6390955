"""Overload: an open-loop load at 3x the measured capacity for 60 s on a mix of every route.

    python -m bench.reliability.overload                      # ~2 min; a table
    python -m bench.reliability.overload --factor 3 --seconds 60 --workers 2
    python -m bench.reliability.overload --seconds 10          # a quick look

1. Capacity: 64 closed-loop clients on the mix (bench/reliability/server.py: .npy, JSON, PNG
   uploads, /compare, V2 when the service has it, and a few bad requests) for --capacity-s;
   replies per second is the capacity.
2. Overload: requests sent at --factor x capacity, each when due (bench/reliability/load.py),
   for --seconds. Each one must be answered: 200 (or the 4xx a bad request is meant to get),
   or 503/429 with Retry-After. A timeout (--timeout), a reset, a 5xx other than 503 or a 503
   without Retry-After is a failure. p50/p99 of the accepted requests, from their due time.
3. Recovery: right after the last request is sent, 64 closed-loop clients again; the time until
   a 0.5 s window runs at >= 90% of the capacity with no 503 is "back to full speed".
Exit 1 if any request failed or recovery took longer than 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from bench.reliability import load
from bench.reliability.server import has_v2, mix, serve, stop


def capacity(host, port, requests, seconds: float) -> float:
    results = load.run(load.closed_loop(host, port, requests, 64, seconds))
    return len(results) / seconds


def recovery(results: list[load.Result], start: float, target: float,
             window: float = 0.5, step: float = 0.1) -> float | None:
    """Seconds after ``start`` until a window of replies runs at ``target``/s with no 503."""
    done = sorted((r.done, r.status) for r in results if not r.error)
    t = start
    while done and t + window <= done[-1][0]:
        inside = [s for d, s in done if t <= d < t + window]
        if len(inside) >= target * window and 503 not in inside and 429 not in inside:
            return t - start
        t += step
    return None


def by_route(results: list[load.Result]) -> str:
    lines = ["| request | sent | 200 | intended 4xx | 503/429 + Retry-After | failed | "
             + "p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    names = sorted({r.name for r in results})
    for name in [*names, "all"]:
        rs = [r for r in results if name in ("all", r.name)]
        accepted = [r.latency_ms for r in rs if r.expected]
        shed = sum(1 for r in rs if r.status in (503, 429) and r.retry_after)
        ok = sum(1 for r in rs if r.status == 200)
        lines.append(f"| {name} | {len(rs)} | {ok} | {sum(r.expected for r in rs) - ok} | "
                     f"{shed} | {len(load.unexpected(rs))} | "
                     f"{load.percentile(accepted, 50):.1f} | {load.percentile(accepted, 99):.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server (host:port); default: start one")
    p.add_argument("--port", type=int, default=3150)
    p.add_argument("--images", type=int, default=16,
                   help="images in the small requests of the mix (bench/reliability/server.py)")
    p.add_argument("--workers", type=int, default=None,
                   help="CIFAR2_WORKERS of the started server (default: one per server CPU)")
    p.add_argument("--client-cpus", default="0" if len(os.sched_getaffinity(0)) > 1 else "",
                   help="CPUs of this load generator, the server gets the others (taskset "
                   "syntax; '' shares them all). Default: CPU 0, so that a client at 3x the "
                   "capacity does not take the server's CPU and measure itself")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=10.0, help="client timeout per request, s")
    args = p.parse_args()

    proc, server_cpus = None, None
    if args.client_cpus:
        client = _cpus(args.client_cpus)
        server_cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0) - client))
        os.sched_setaffinity(0, client)
    workers = args.workers or (len(server_cpus.split(",")) if server_cpus else 2)
    if args.url:
        url = args.url if args.url.startswith("http") else f"http://{args.url}"
    else:
        log = Path(tempfile.mkdtemp(prefix="overload_")) / "serve.log"
        print(f"starting bentoml serve (CIFAR2_WORKERS={workers}, CPUs "
              f"{server_cpus or 'all'}; this client on CPUs {args.client_cpus or 'all'}; "
              f"log: {log})", file=sys.stderr)
        proc, url = serve(args.port, log, cpus=server_cpus, CIFAR2_WORKERS=str(workers))
    host, port = url.split("//")[1].split(":")
    port = int(port)
    try:
        requests = mix(has_v2(url), n=args.images)
        load.run(load.closed_loop(host, port, requests, 16, 2.0))  # warm-up
        cap = capacity(host, port, requests, args.capacity_s)
        rate = cap * args.factor
        print(f"capacity (64 closed-loop clients, {args.capacity_s:g} s): {cap:,.0f} replies/s;"
              f" open loop at {rate:,.0f}/s for {args.seconds:g} s", file=sys.stderr)
        bar = tqdm(total=int(rate * args.seconds), desc="overload", unit="req")

        # The open loop waits for its stragglers; recovery starts when the last one was sent,
        # so both run in one event loop.
        async def both():
            t0 = time.perf_counter()
            over_task = asyncio.ensure_future(load.open_loop(
                host, port, requests, rate, args.seconds, args.timeout, progress=bar.update,
                t0=t0))
            await asyncio.sleep(args.seconds)
            sent_at = time.perf_counter() - t0
            after = await load.closed_loop(host, port, requests, 64, 5.0, args.timeout, seed=1,
                                           t0=t0)
            return await over_task, after, sent_at

        over, after, sent_at = load.run(both())
        bar.close()
    finally:
        if proc is not None:
            stop(proc)

    counts = load.tally(over)
    failed = load.unexpected(over)
    back = recovery(after, sent_at, 0.9 * cap)
    achieved = len(over) / args.seconds
    print(f"\ncapacity {cap:,.0f} replies/s; offered {rate:,.0f}/s ({args.factor:g}x) for "
          f"{args.seconds:g} s; sent {len(over):,} ({achieved:,.0f}/s achieved)")
    print("outcomes: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())))
    print(f"failed (timeout, reset, 5xx other than 503, 503 without Retry-After, "
          f"unintended status): {len(failed)}")
    backlog = counts.get("client backlog", 0)
    if backlog:
        print(f"never sent, the client fell behind (not the server's doing): {backlog:,}; "
              "with more than 1% of these the run measured the client, not the server")
    if failed:
        print("  " + ", ".join(f"{k}: {v}" for k, v in Counter(
            (r.name, r.error or r.status) for r in failed).most_common(8)))
    print(by_route(over))
    when = f"after {back:.1f} s" if back is not None else "NOT within 5 s"
    print(f"\nback to full speed (a 0.5 s window at >= 90% of capacity, no 503) {when} "
          "after the load")
    sys.exit(1 if failed or backlog > 0.01 * len(over) or back is None or back > 2.0 else 0)


def _cpus(spec: str) -> set[int]:
    """taskset's list syntax: "0", "0,2", "0-3"."""
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


if __name__ == "__main__":
    main()
