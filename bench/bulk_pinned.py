"""Bulk /predict with the client off the server's core: what HTTP costs the server itself.

    python -m bench.bulk_pinned                 # ~2 min; a table
    python -m bench.bulk_pinned --concurrency 1 2 4 --repeat 3 --duration 4

bench/bench_http.py holds bulk /predict to in-process ONNX Runtime on both cores, with wrk on
the same two cores as the server: there the client's CPU and the server's HTTP work both come
out of the model's share. In a deployment the clients are other machines. This script gives
the server one core and the client the other, so that what is lost is the server's own:
`bentoml serve` with one worker pinned to the last CPU (taskset), wrk on the first, each
posting bench_http's 1,024-image `.npy` body. The bound is the same ORT session in-process on
one thread pinned to the server's CPU, measured for 2 s right before and right after each wrk
run (the mean of the two, as bench_http does). Every cell is the median of --repeat runs.
Needs wrk, 2 CPUs or more, and cifar2-net / cifar2-dense in the model store. Exit code 2 when
either is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from bench.bench_http import LUA, ROUTES, bodies, ort_images_per_s, paired_bound, start, stop, wrk


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--duration", type=float, default=4, help="seconds per wrk run")
    p.add_argument("--port", type=int, default=3320)
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs or more: one for the server, one for the client", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    client, server = cpus[0], cpus[-1]

    from service import config

    chunk = config.CPU_CHUNK or 1024
    tmp = Path(tempfile.mkdtemp(prefix="bulk_pinned_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    body = bodies(tmp)["npy1024"]
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR2_WORKERS": "1"}
    cmd = ["taskset", "-c", str(server), str(Path(sys.executable).with_name("bentoml")),
           "serve", "--port", str(args.port), "--host", "127.0.0.1"]

    def bound() -> float:  # this thread on the server's CPU for the in-process run
        os.sched_setaffinity(0, {server})
        try:
            return ort_images_per_s(chunk, seconds=2, threads=1)
        finally:
            os.sched_setaffinity(0, {client})  # wrk, started from here, inherits it

    os.sched_setaffinity(0, {client})
    proc = start(cmd, env, url + "/readyz", tmp / "serve.log")
    rows = []
    try:
        wrk(url + ROUTES["npy1024"], body, 2, 2, lua)  # warm-up
        bar = tqdm(total=len(args.concurrency) * args.repeat, desc="wrk runs", unit="run")
        for c in args.concurrency:
            runs, edges = [], [bound()]
            for _ in range(args.repeat):
                runs.append(wrk(url + ROUTES["npy1024"], body, c, args.duration, lua))
                edges.append(bound())
                bar.update()
            got = statistics.median(r["rps"] * body[2] for r in runs)
            rows.append((c, got, paired_bound(edges),
                         statistics.median(r["p99_ms"] for r in runs),
                         sum(r["errors"] for r in runs)))
        bar.close()
    finally:
        stop(proc)
    print(f"\nbulk /predict, 1,024 images a request (.npy); server: 1 worker on CPU {server}; "
          f"wrk on CPU {client}; bound: ORT in-process, 1 thread on CPU {server}, calls of "
          f"{chunk} images, around each run; medians of {args.repeat} runs of "
          f"{args.duration:g} s\n")
    print("| c | images/s | % of bound | bound (images/s) | p99 ms | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, got, b, p99, errors in rows:
        print(f"| {c} | {got:,.0f} | {got / b:.0%} | {b:,.0f} | {p99:.1f} | {errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
