"""Alternating A/B runs of service variants with wrk, each paired with a raw-uvicorn ceiling run.

    python -m bench.ab_http base: gc700:CIFAR2_GC_THRESHOLD=700           # env variants
    python -m bench.ab_http old:@/tmp/old-checkout new: --rounds 5        # another checkout
    python -m bench.ab_http on: off:CIFAR2_BATCHING=off --body png1      # /classify
    python -m bench.ab_http base: --body v2bin1                            # V2 binary infer

A variant is ``NAME:ENV=VALUE,ENV=VALUE`` (the service with those variables) or
``NAME:@PATH`` (``bentoml serve`` run from another checkout, e.g. a ``git worktree`` of an older
commit). Each round starts every variant in turn, warms it up for 2 s and measures it right
after a ceiling run, so neighbouring numbers saw the same load from other jobs; the medians
over the rounds are printed last, with the workers' summed RSS after each run. This is how the
A/B figures in docs/serving.md were taken.
Needs wrk and cifar2-net / cifar2-dense in the model store, like bench/bench_http.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

from bench import bench_http
from bench.bench_http import LUA, bodies, start, stop, wrk


def variant(spec: str) -> tuple[str, dict, Path]:
    name, _, rest = spec.partition(":")
    if rest.startswith("@"):
        return name, {}, Path(rest[1:]).resolve()
    env = dict(pair.split("=", 1) for pair in rest.split(",") if pair)
    return name, env, bench_http.ROOT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="NAME:ENV=V,... or NAME:@CHECKOUT")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--body", default="npy1", choices=list(bench_http.ROUTES),
                   help="request body, as bench/bench_http.py builds it; it picks the route")
    p.add_argument("--port", type=int, default=3200)
    args = p.parse_args()
    variants = [variant(v) for v in args.variants]
    tmp = Path(tempfile.mkdtemp(prefix="ab_http_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    body = bodies(tmp)[args.body]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    url = f"http://127.0.0.1:{args.port}"
    route = bench_http.ROUTES[args.body]
    ceiling_url = f"http://127.0.0.1:{args.port + 1}{route}"
    # As many ceiling workers as the service has, like bench/bench_http.py.
    ceiling = start([sys.executable, "-m", "bench.raw_asgi", "--port", str(args.port + 1),
                     "--workers", env.get("CIFAR2_WORKERS", "2")], env,
                    f"http://127.0.0.1:{args.port + 1}/predict", tmp / "raw.log")
    runs: dict[str, list[tuple[dict, dict]]] = {}
    try:
        for _ in range(args.rounds):
            for name, extra, checkout in variants:
                bench_http.ROOT = checkout  # start() serves from this folder
                cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "--port",
                       str(args.port), "--host", "127.0.0.1"]
                proc = start(cmd, {**env, **extra}, url + "/readyz", tmp / "serve.log")
                try:
                    wrk(url + route, body, args.concurrency, 2, lua)  # warm-up
                    ceil = wrk(ceiling_url, body, args.concurrency, args.duration, lua)
                    got = wrk(url + route, body, args.concurrency, args.duration, lua)
                    got["rss_mib"] = workers_rss_mib(proc.pid)
                finally:
                    stop(proc)
                runs.setdefault(name, []).append((got, ceil))
                print(f"{name}: {got['rps']:,.0f} req/s, ceiling {ceil['rps']:,.0f} "
                      f"({got['rps'] / ceil['rps']:.1%}), p99 {got['p99_ms']:.1f} ms, "
                      f"errors {got['errors']}, workers' RSS {got['rss_mib']:,.0f} MiB",
                      flush=True)
    finally:
        stop(ceiling)
    print(f"\nmedians over {args.rounds} rounds, {route} ({args.body}), "
          f"c={args.concurrency}:")
    for name, pairs in runs.items():
        rps = statistics.median(g["rps"] for g, _ in pairs)
        pct = statistics.median(g["rps"] / c["rps"] for g, c in pairs)
        p99 = statistics.median(g["p99_ms"] for g, _ in pairs)
        rss = statistics.median(g["rss_mib"] for g, _ in pairs)
        print(f"  {name}: {rps:,.0f} req/s, {pct:.1%} of the ceiling, p99 {p99:.1f} ms, "
              f"workers' RSS {rss:,.0f} MiB")


def workers_rss_mib(server_pid: int) -> float:
    """Summed RSS of the service's worker processes (BentoML's worker script)."""
    total = 0
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any("worker" in part for part in child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


if __name__ == "__main__":
    main()
