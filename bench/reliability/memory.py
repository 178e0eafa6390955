"""Worker memory and speed of the ONNX Runtime sessions through varying batch sizes, in-process:
ORT's default sessions against the service's (shared CPU arena that gives back what bursts
took, service/memory.py).

    python -m bench.reliability.memory                        # the store's cifar2-net/-dense
    python -m bench.reliability.memory --onnx NET.onnx DENSE.onnx --rounds 3 --json out.json

Each configuration runs in a fresh process: both models' sessions, the service's warm-up batch
sizes, images/s of the convnet per batch size (one thread), then ``--rounds`` rounds of three
threads calling the models with a seeded sequence of batch sizes, mostly small with bursts up to
1,024 (a queue build-up), like the batcher's thread and event loop do. Prints RSS after the
warm-up and after each round (each followed by one single-image call, as the next request),
and the growth after the warm-up; the soak's goal is < 10%.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

CONFIGS = ("ORT defaults", "service")
SPEED_BATCHES = (1, 16, 64, 256, 1024)


def batch_size(rng: random.Random) -> int:
    """Mostly what natural batching makes at moderate load, sometimes a burst."""
    u = rng.random()
    if u < 0.85:
        return rng.randint(1, 128)
    if u < 0.97:
        return rng.randint(128, 512)
    return rng.randint(512, 1024)


def measure(config: str, paths: list[str], rounds: int, calls: int) -> dict:
    """In this process: RSS (MiB) after warm-up and after each round, and img/s per batch size."""
    from export.runtime import open_session, run_session
    from service.config import WARMUP_BATCH_SIZES as WARMUP
    from service.memory import RUN_OPTIONS
    from service.runtime import (
        WARMUP_AT_ONCE,
        open_serving_session,
        run_at_once,
        run_serving_session,
    )

    if config == "service":
        sessions = [open_serving_session(p, "cpu", 1)[0] for p in paths]
        run = lambda i, x: run_serving_session(sessions[i], x)
    else:
        sessions = [open_session(p, "cpu", 1)[0] for p in paths]
        run = lambda i, x: run_session(sessions[i], x)

    proc = psutil.Process()
    rss = lambda: round(proc.memory_info().rss / 2**20, 1)
    x = np.random.default_rng(0).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    speed = {}
    for n in SPEED_BATCHES:
        b = x[:n].copy()
        run(0, b)
        reps, t0 = max(3, 2000 // n), time.perf_counter()
        for _ in range(reps):
            run(0, b)
        speed[n] = round(n * reps / (time.perf_counter() - t0))
    for n in WARMUP:
        for i in range(len(sessions)):
            run(i, x[:n].copy())
    if config == "service":  # the rest of ServedModel.warmup
        for s in sessions:
            run_at_once(s, WARMUP[-1], WARMUP_AT_ONCE, RUN_OPTIONS)
    out = {"config": config, "img_per_s": speed, "rss_warm": rss(), "rss_rounds": []}

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(calls):
            n = batch_size(rng)
            # A fresh array per call, as the batcher concatenates requests.
            run(0 if rng.random() < 0.8 or len(sessions) == 1 else 1,
                np.concatenate([x[:n // 2], x[n // 2:n]]))

    for r in range(rounds):
        threads = [threading.Thread(target=caller, args=(r * 10 + k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The next request: a region that the last run's own outputs still held when that run
        # ended is given back at the end of the next run, so measure the state it leaves.
        run(0, x[:1].copy())
        out["rss_rounds"].append(rss())
    out["growth_pct"] = round((out["rss_rounds"][-1] / out["rss_warm"] - 1) * 100, 1)
    return out


def store_models() -> list[str]:
    import bentoml

    return [bentoml.models.get(f"{name}:latest").path_of("model.onnx")
            for name in ("cifar2-net", "cifar2-dense")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", nargs="+", help="model.onnx files, the convnet first "
                   "(default: cifar2-net and cifar2-dense from the BentoML store)")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=300, help="model calls per thread and round")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    paths = args.onnx or store_models()
    if args.one:
        print(json.dumps(measure(args.one, paths, args.rounds, args.calls)))
        return
    results = []
    for config in args.configs:
        done = subprocess.run([sys.executable, "-m", "bench.reliability.memory", "--one", config,
                               "--rounds", str(args.rounds), "--calls", str(args.calls),
                               "--onnx", *paths], capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"{config}: exit {done.returncode}\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{config}: done", file=sys.stderr)
    print("\n| sessions | RSS after warm-up MiB | after each round | growth | "
          + " | ".join(f"img/s x{n}" for n in SPEED_BATCHES) + " |")
    print("| --- | ---: | --- | ---: | " + " | ".join("---:" for _ in SPEED_BATCHES) + " |")
    for r in results:
        print(f"| {r['config']} | {r['rss_warm']:.1f} | "
              f"{' '.join(f'{v:.0f}' for v in r['rss_rounds'])} | {r['growth_pct']:+.1f}% | "
              + " | ".join(f"{r['img_per_s'][str(n)]:,}" for n in SPEED_BATCHES) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
