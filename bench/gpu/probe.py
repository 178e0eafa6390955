"""Five questions about the served convnet on CUDA, answered in under a minute on the GPU machine.

    PYTHONPATH=.gpu-site python3 -m bench.gpu.probe [--bundle gpu-bundle] [--out docs]

1. Which session options run it? ORT's defaults, cuDNN's HEURISTIC search, memory patterns
   off, and the served options (service/runtime.py serving_session_options), each at batch
   1, 64 and 1,024: "ok" or the first line of ONNX Runtime's error.
2. What does a new batch shape cost? The served session runs each batch size 1..64 for the
   first time (cold: ORT allocates and cuDNN plans for the shape), then again (warm). Adaptive
   batching makes every one of those sizes; padding to powers of two makes seven.
3. What do two worker processes on one GPU cost each other? Each process runs batch 16 in a
   loop, alone and then two at once (the service's default CIFAR2_WORKERS=2): time per call.
4. What does the CPU arena's shrinkage (service/memory.py RUN_OPTIONS) cost a CUDA session?
   The served session runs batch 16 in a loop with those run options and without them.
5. Is it the way the service calls the model? The session with 1 ORT thread (the service's
   CIFAR2_ORT_THREADS) and with ORT's default, each in a plain loop and through the service's
   own batcher (service/batcher.py) on a uvloop event loop, 16 single-image requests at a time:
   on the loop itself (inline_max=32, the default) and in a thread (inline_max=0).

Prints five tables and writes gpu_probe.json to --out. Exit code 2 when the bundle is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.runtime import open_session, run_session
from service.memory import RUN_OPTIONS
from service.runtime import (
    CUDA_OPTIONS,
    open_serving_session,
    serving_session_options,
    thread_calls,
)

BATCHES = (1, 64, 1024)
SHAPES = range(1, 65)
LOOP_BATCH, LOOP_CALLS = 16, 2000


def plain_options(mem_pattern: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.enable_mem_pattern = mem_pattern
    return opts


CONFIGS = {  # name -> (SessionOptions factory, CUDA provider options)
    "ORT defaults (EXHAUSTIVE search, memory patterns on)": (plain_options, None),
    "HEURISTIC search, memory patterns on": (plain_options, CUDA_OPTIONS),
    "EXHAUSTIVE search, memory patterns off": (lambda: plain_options(False), None),
    "served: HEURISTIC, memory patterns off, shared CPU arena": (serving_session_options,
                                                                CUDA_OPTIONS),
}


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def options_matrix(path: Path, device: str) -> list[dict]:
    rows = []
    for name, (options, cuda) in CONFIGS.items():
        sess, _ = open_session(path, device, cuda_options=cuda, options=options())
        for n in BATCHES:
            try:
                run_session(sess, images(n))
                status = "ok"
            except Exception as e:  # noqa: BLE001 - the failure is the finding
                status = str(e).splitlines()[0][:160]
            rows.append({"options": name, "batch": n, "status": status})
        del sess
    return rows


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def loop_ms(fn, calls: int) -> dict:
    """``fn`` run 20 times to warm, then ``calls`` times: median and p99 milliseconds a call."""
    for _ in range(20):
        fn()
    times = [ms(fn) for _ in range(calls)]
    return {"median_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99))}


def shape_costs(path: Path, device: str) -> dict:
    sess, _ = open_serving_session(path, device, 0)
    cold, warm = {}, {}
    for n in SHAPES:
        x = images(n)
        cold[n] = ms(lambda x=x: run_session(sess, x))
        warm[n] = statistics.median(ms(lambda x=x: run_session(sess, x)) for _ in range(5))
    return {"cold_ms": cold, "warm_ms": warm}


def loop_worker(path: str, device: str) -> None:
    """One process: the served session, batch LOOP_BATCH, LOOP_CALLS calls; prints JSON."""
    sess, _ = open_serving_session(path, device, 0)
    x = images(LOOP_BATCH)
    print(json.dumps(loop_ms(lambda: run_session(sess, x), LOOP_CALLS)))


def shrinkage(path: Path, device: str) -> dict:
    sess, _ = open_serving_session(path, device, 0)
    x = images(LOOP_BATCH)
    return {name: loop_ms(lambda o=run_options: run_session(sess, x, o), LOOP_CALLS // 4)
            for name, run_options in (("with RUN_OPTIONS (arena shrinkage)", RUN_OPTIONS),
                                      ("without", None))}


def call_paths(path: Path, device: str) -> list[dict]:
    import asyncio

    import uvloop

    from service.batcher import MicroBatcher

    rows, one, x = [], images(1), images(LOOP_BATCH)
    rounds = LOOP_CALLS // 8
    for threads in (1, 0):
        sess, provider = open_serving_session(path, device, threads)

        def fn(batch, s=sess):
            return run_session(s, batch)
        plain = loop_ms(lambda: fn(x), LOOP_CALLS // 4)["median_ms"]
        rows.append({"threads": threads, "path": "plain loop", "ms_per_16": plain})
        for inline in (32, 0):
            batcher = MicroBatcher(fn, 1024, concurrency=2, inline_max=inline,
                                   thread_calls=thread_calls(provider))  # as the service

            async def run(n: int, b=batcher) -> float:
                for _ in range(20):
                    await asyncio.gather(*(b(one) for _ in range(LOOP_BATCH)))
                t0 = time.perf_counter()
                for _ in range(n):
                    await asyncio.gather(*(b(one) for _ in range(LOOP_BATCH)))
                return (time.perf_counter() - t0) / n * 1000
            stats_ms = uvloop.run(run(rounds))
            calls = batcher.stats()
            rows.append({"threads": threads, "path": f"batcher, inline_max={inline}",
                         "ms_per_16": stats_ms,
                         "requests_per_call": calls["requests"] / max(1, calls["calls"])})
        del sess
    return rows


def processes(path: Path, count: int, device: str) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-m", "bench.gpu.probe", "--loop", str(path),
                               "--device", device],
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("gpu-bundle"))
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: the same steps on the CPU provider, to try the script anywhere")
    p.add_argument("--loop", help=argparse.SUPPRESS)  # a child process of question 3
    args = p.parse_args(argv)
    if args.loop:
        loop_worker(args.loop, args.device)
        return 0
    path = args.bundle / "net" / "model.onnx"
    if not path.is_file():
        print(f"error: {path} is missing: carry the bundle made by `make gpu-bundle`",
              file=sys.stderr)
        return 2
    result = {"model": str(path), "device": args.device,
              "options": options_matrix(path, args.device)}
    print("| options | batch | result |\n| --- | ---: | --- |")
    for r in result["options"]:
        print(f"| {r['options']} | {r['batch']} | {r['status']} |")
    costs = shape_costs(path, args.device)
    result["shapes"] = costs
    cold, warm = list(costs["cold_ms"].values()), list(costs["warm_ms"].values())
    pow2 = [costs["cold_ms"][n] for n in SHAPES if n & (n - 1) == 0]
    print("\n| batch sizes 1..64 | median ms | max ms | sum ms |\n| --- | ---: | ---: | ---: |")
    print(f"| first call (cold shape) | {statistics.median(cold):.2f} | {max(cold):.1f} | "
          f"{sum(cold):.0f} |")
    print(f"| later call (warm shape) | {statistics.median(warm):.3f} | {max(warm):.2f} | "
          f"{sum(warm):.1f} |")
    print(f"| first call, powers of two only | {statistics.median(pow2):.2f} | {max(pow2):.1f} | "
          f"{sum(pow2):.0f} |")
    result["processes"] = {str(k): processes(path, k, args.device) for k in (1, 2)}
    print(f"\n| processes at once | ms per batch-{LOOP_BATCH} call, median | p99 |\n"
          "| ---: | ---: | ---: |")
    for k, runs in result["processes"].items():
        for r in runs:
            print(f"| {k} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} |")
    result["shrinkage"] = shrinkage(path, args.device)
    print(f"\n| served session, batch {LOOP_BATCH} | ms per call, median | p99 |\n"
          "| --- | ---: | ---: |")
    for name, r in result["shrinkage"].items():
        print(f"| {name} | {r['median_ms']:.3f} | {r['p99_ms']:.3f} |")
    result["call_paths"] = call_paths(path, args.device)
    print(f"\n| ORT threads | how it is called | ms per {LOOP_BATCH} single-image requests | "
          "requests per call |\n| ---: | --- | ---: | ---: |")
    for r in result["call_paths"]:
        per_call = f"{r['requests_per_call']:.1f}" if "requests_per_call" in r else "–"
        print(f"| {r['threads'] or 'default'} | {r['path']} | {r['ms_per_16']:.3f} | {per_call} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_probe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}/gpu_probe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
