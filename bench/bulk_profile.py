"""Where the CPU goes while bulk /predict is served: a perf profile of every core.

    python -m bench.bulk_profile [--concurrency 2] [--seconds 5]

Starts `bentoml serve` (the model store's cifar2-net / cifar2-dense, the service's workers),
loads it with wrk at --concurrency connections posting bench/bench_http.py's 1,024-image `.npy`
body, and after 3 s of load runs `perf record -F 499 -a` for --seconds. Prints the share of the
samples per process and library (`perf report --sort comm,dso`), how many samples there were
against what every core busy all the time would give (an idle core gives none), and the rate
wrk got meanwhile. This is how docs/serving.md splits a bulk request's cost between ONNX
Runtime, the kernel, the interpreter, libc and the client. Needs perf (Debian: linux-perf) and
wrk; run it as root or with kernel.perf_event_paranoid <= 0. Exit code 2 when either is
missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_http import LUA, ROUTES, bodies, start, stop, wrk

HZ = 499
ROW = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(.+?)\s*$")


def profile(perf_data: Path, seconds: float) -> None:
    subprocess.run(["perf", "record", "-F", str(HZ), "-a", "-o", str(perf_data), "--",
                    "sleep", str(seconds)], check=True, capture_output=True)


def shares(perf_data: Path, top: int) -> list[tuple[float, str, str]]:
    """(percent, process, library) rows of the report, largest first."""
    report = subprocess.run(["perf", "report", "-i", str(perf_data), "--sort", "comm,dso",
                             "--stdio"], check=True, capture_output=True, text=True).stdout
    rows = [(float(m[1]), m[2], m[3]) for line in report.splitlines()
            if not line.startswith("#") and (m := ROW.match(line))]
    return rows[:top]


def samples(perf_data: Path) -> int:
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "comm"], check=True,
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of profile")
    p.add_argument("--top", type=int, default=12, help="rows of the table")
    p.add_argument("--port", type=int, default=3300)
    args = p.parse_args(argv)
    missing = [tool for tool in ("perf", "wrk") if shutil.which(tool) is None]
    if missing:
        print(f"error: {' and '.join(missing)} not found: `apt-get install linux-perf wrk`",
              file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bulk_profile_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    body = bodies(tmp)["npy1024"]
    base = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    proc = start([str(Path(sys.executable).with_name("bentoml")), "serve", "--port",
                  str(args.port), "--host", "127.0.0.1"], env, base + "/readyz",
                 tmp / "serve.log")
    try:
        wrk(base + ROUTES["npy1024"], body, args.concurrency, 2, lua)  # warm-up
        got: dict = {}
        load = threading.Thread(target=lambda: got.update(wrk(
            base + ROUTES["npy1024"], body, args.concurrency, args.seconds + 6, lua)))
        load.start()
        time.sleep(3)
        profile(tmp / "perf.data", args.seconds)
        load.join()
    finally:
        stop(proc)
    cores = os.cpu_count() or 1
    n, full = samples(tmp / "perf.data"), int(HZ * args.seconds * cores)
    print(f"bulk /predict, 1,024 images a request, c={args.concurrency}: {got['rps']:.1f} "
          f"req/s ({got['rps'] * 1024:,.0f} images/s) over {got['seconds']:.1f} s of wrk; "
          f"perf: {n:,} samples of {full:,} possible on {cores} cores ({n / full:.1%} busy)\n")
    print("| process | library | share of samples |\n| --- | --- | ---: |")
    for pct, comm, dso in shares(tmp / "perf.data", args.top):
        print(f"| {comm} | {Path(dso).name if dso.startswith('/') else dso} | {pct:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
