"""Alternating A/B of two checkouts' services on one machine, with the GPU check's HTTP cells.

    python -m bench.gpu.ab_http old:@../old-checkout new:@. --rounds 4        # on the GPU machine
    python -m bench.gpu.ab_http a:@. b:@. --device cpu --seconds 1 --rounds 1  # anywhere
    python -m bench.gpu.ab_http old:@../old new:@. --rounds 3 --workers 1 --bulk-only

Between two GPU runs on different days the same cell moves by 20% or more (another VM, another
host CPU), so a before/after of the service code is only worth something when both run on the
same machine, in turn. Each arm is ``NAME:@PATH``: `bentoml serve` from that checkout (a
`git archive` or `git worktree` of an older commit), with the same model bundle for both, so the
code is the only difference. Each round runs every arm once, in turn (in the given order in the
first half of the rounds, reversed in the second, so neither arm always goes first): a model
store from the bundle, the service on ``--device``, then the cells of bench/gpu/http_runs.py
(single-image `.npy` `/predict` and V2 binary at c=32; bulk `.npy` `/predict` of 1,024 and 4,096
images at c=4), ``--seconds`` each. Prints one line per cell and round, then the medians per arm.
Each arm runs in a process of its own, inside its checkout, so its own http_runs.py is used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
BULK = [1024, 4096]


def arm(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition(":@")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{spec!r}: an arm is NAME:@PATH (e.g. old:@../old)")
    tree = Path(path).resolve()
    if not (tree / "bench" / "gpu" / "http_runs.py").is_file():
        raise argparse.ArgumentTypeError(f"{tree} is not a checkout of this project "
                                         "(no bench/gpu/http_runs.py)")
    return name, tree


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arms", type=arm, nargs="+", metavar="NAME:@PATH")
    p.add_argument("--bundle", type=Path, default=Path("gpu-bundle"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of load per cell")
    p.add_argument("--workers", type=int, help="CIFAR2_WORKERS of both arms (default: the "
                                               "service's); 1 takes how the connections fall "
                                               "on the workers out of the comparison")
    p.add_argument("--bulk-only", action="store_true", help="only the bulk cells")
    p.add_argument("--out", type=Path, help="write every round's cells to this JSON file")
    p.add_argument("--one", nargs=2, metavar=("DEVICE", "JSON"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_one(bundle: Path, device: str, seconds: float, out: Path, workers: int | None,
            bulk_only: bool) -> None:
    """One arm, one round, in the checkout this process runs in (its cwd is on sys.path)."""
    from bench.gpu.http_runs import make_store, plan, serve_and_load
    spec = json.loads((bundle / "bundle.json").read_text())
    with tempfile.TemporaryDirectory(prefix="gpu_ab_") as tmp:
        make_store(bundle, Path(tmp) / "store")
        cells = plan([] if bulk_only else [32], BULK, 4)
        result = serve_and_load(device, bundle, spec["served"], cells, seconds, Path(tmp),
                                workers)
    out.write_text(json.dumps(result, default=str))


def cells(result: dict) -> list[dict]:
    rows = []
    for c in result.get("cells", []):
        server = c.get("server") or {}
        rows.append({"cell": f"{c['request']} c={c['concurrency']}", "status": c["status"],
                     "images_per_s": c.get("images_per_s"), "p99_ms": c.get("p99_ms"),
                     "server_ms": server.get("server_ms"), "model_ms": server.get("model_ms")})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle.resolve()
    if args.one:
        run_one(bundle, args.one[0], args.seconds, Path(args.one[1]), args.workers,
                args.bulk_only)
        return 0
    if not (bundle / "bundle.json").is_file():
        print(f"error: no bundle at {args.bundle}/: `make gpu-bundle` makes one", file=sys.stderr)
        return 2
    # The arm runs inside its checkout: a relative entry (PYTHONPATH=.gpu-site) must still
    # point where it pointed here.
    inherited = [str(Path(e).resolve()) for e in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                 if e]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_ab_") as tmp:
        for round_ in range(1, args.rounds + 1):
            second_half = args.rounds > 1 and round_ > args.rounds // 2
            order = args.arms[::-1] if second_half else args.arms
            for name, tree in order:
                out = Path(tmp) / f"{name}{round_}.json"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *inherited])}
                done = subprocess.run([sys.executable, str(HERE), f"{name}:@{tree}",
                                       "--bundle", str(bundle), "--seconds", str(args.seconds),
                                       "--one", args.device, str(out),
                                       *(["--workers", str(args.workers)] if args.workers else []),
                                       *(["--bulk-only"] if args.bulk_only else [])],
                                      check=False, cwd=tree, env=env)
                result = json.loads(out.read_text()) if out.is_file() else {
                    "status": f"failed: exit {done.returncode}"}
                runs.append({"arm": name, "round": round_, "status": result.get("status"),
                             "cells": cells(result)})
                for c in runs[-1]["cells"] or [{"cell": "-", "status": result.get("status")}]:
                    print(f"{name:>6} r{round_} {c['cell']:34} {c.get('images_per_s') or 0:>12,.0f}"
                          f" img/s  p99 {c.get('p99_ms') or 0:6.1f} ms  server "
                          f"{c.get('server_ms') or 0:6.2f} ms  model {c.get('model_ms') or 0:5.2f}"
                          f" ms  {c['status']}", flush=True)
    print(f"\nmedians over {args.rounds} round(s), device {args.device}, {args.seconds:g} s a "
          f"cell, workers {args.workers or 'as configured'}")
    names = [name for name, _ in args.arms]
    print(f"| cell | {' | '.join(names)} |\n| --- |{' ---: |' * len(names)}")
    for label in dict.fromkeys(c["cell"] for r in runs for c in r["cells"]):
        medians = []
        for name in names:
            got = [c["images_per_s"] for r in runs if r["arm"] == name for c in r["cells"]
                   if c["cell"] == label and c["status"] == "measured"]
            medians.append(f"{statistics.median(got):,.0f}" if got else "-")
        print(f"| {label} | {' | '.join(medians)} |")
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "seconds": args.seconds,
                                        "workers": args.workers, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
