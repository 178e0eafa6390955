"""Faults under load: a killed worker, SIGTERM, slow clients, a broken model store, clients that
hang up, and clients that probe unknown paths. One table row per fault.

    python -m bench.reliability.faults                     # every fault, ~4 minutes
    python -m bench.reliability.faults --only kill slow    # some of them
    python -m bench.reliability.faults --only store        # no load, a few seconds

kill        CIFAR2_WORKERS=2, open-loop load at --load x capacity; SIGKILL one worker after 5 s.
            Counts the requests lost, the time until the supervisor has a new worker process
            and until it logs "Service ... initialized" (ready), and the 200s served meanwhile.
drain       SIGTERM to `bentoml serve` (CIFAR2_DRAIN_S=--drain-s) while 48 clients post
            512-image .npy requests, on fresh connections and then on keep-alive ones: requests
            lost (sent, never answered), 503s, time until /readyz says 503, exit code and time.
            Only when the service has a drain (service/drain.py).
slow        200 connections that send their headers, or their body, one byte a second; the p99
            of 8 normal clients with and without them (goal: < 2x).
store       model.onnx of cifar2-net removed, then truncated, in a copy of the store: the
            service starts, /readyz is 503 and its body names the file and the fix.
disconnect  300 clients that hang up mid-request (after the whole request, or half the body);
            then: ERROR lines in the log, worker fds against before, a normal request works.
paths       5,000 GETs of distinct unknown paths: /metrics size and worker RSS before and after
            (each path must not become a new metrics series).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.reliability import load
from bench.reliability.server import (
    BENTOML,
    has_v2,
    mix,
    npy_bytes,
    open_fds,
    rss_mb,
    serve,
    stop,
    workers,
)

ROOT = Path(__file__).resolve().parents[2]
ROWS: list[tuple[str, str, str]] = []  # (fault, result, goal met?)


def row(fault: str, result: str, ok: bool | None) -> None:
    ROWS.append((fault, result, {True: "yes", False: "NO", None: "-"}[ok]))
    print(f"\n[{fault}] {result} (goal met: {ROWS[-1][2]})", file=sys.stderr)


def capacity(port: int, requests, seconds: float = 5.0) -> float:
    load.run(load.closed_loop("127.0.0.1", port, requests, 16, 1.0))
    return len(load.run(load.closed_loop("127.0.0.1", port, requests, 64, seconds))) / seconds


def initialized(log: Path) -> int:
    return log.read_text(errors="replace").count("initialized")


def fault_kill(args, tmp: Path) -> None:
    log = tmp / "kill.log"
    proc, url = serve(args.port, log, CIFAR2_WORKERS="2")
    try:
        requests = mix(has_v2(url), bad=False, n=16)
        rate = capacity(args.port, requests) * args.load
        before = workers(proc)
        marks = {}

        async def run():
            t0 = time.perf_counter()
            task = asyncio.ensure_future(load.open_loop("127.0.0.1", args.port, requests, rate,
                                                        20.0, t0=t0))
            await asyncio.sleep(5.0)
            n_init = initialized(log)
            victim = before[0]
            os.kill(victim.pid, signal.SIGKILL)
            marks["kill"] = time.perf_counter() - t0
            while time.perf_counter() - t0 < 19.0 and "ready" not in marks:
                pids = {w.pid for w in workers(proc)}
                if "restart" not in marks and len(pids - {w.pid for w in before}) > 0:
                    marks["restart"] = time.perf_counter() - t0
                if initialized(log) > n_init:
                    marks["ready"] = time.perf_counter() - t0
                await asyncio.sleep(0.02)
            return await task

        results = load.run(run())
    finally:
        stop(proc)
    failed = load.unexpected(results)
    kinds = load.tally(failed)
    k = marks["kill"]
    restart = marks.get("restart", float("nan")) - k
    ready = marks.get("ready", float("nan")) - k
    back = marks.get("ready", float("inf"))  # never ready: count to the end
    served = sum(1 for r in results if r.status == 200 and k <= r.done <= back)
    row("kill: SIGKILL 1 of 2 workers", f"{rate:,.0f} req/s open loop for 20 s, "
        f"{len(results):,} requests; lost {len(failed)} ("
        + (", ".join(f"{a}: {b}" for a, b in kinds.items()) or "none")
        + f"); new worker process after {restart:.2f} s, ready after {ready:.2f} s; "
        f"{served:,} requests answered 200 by the other worker meanwhile",
        bool(marks.get("ready")) and len(failed) <= 64)


async def sigterm_under_load(args, proc, bulk, fresh: bool, marks: dict) -> list:
    """48 clients posting ``bulk``; SIGTERM after 3 s; marks when /readyz turns and the exit."""
    t0 = time.perf_counter()
    limit = 3.0 + args.drain_s + 30
    task = asyncio.ensure_future(load.closed_loop(
        "127.0.0.1", args.port, [(bulk, 1)], 48, limit, 30.0, t0=t0, fresh=fresh,
        stop_on_refused=True))
    await asyncio.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    marks["term"] = time.perf_counter() - t0
    pool = load.Pool("127.0.0.1", args.port, fresh=True)
    probe = load.Request.get("readyz", "/readyz")
    while proc.poll() is None and time.perf_counter() - t0 < limit:
        if "unready" not in marks:
            r = await load.one(pool, probe, t0, time.perf_counter() - t0, 1.0)
            if r.status == 503 or r.error:
                marks["unready"] = time.perf_counter() - t0
        await asyncio.sleep(0.05)
    marks["exit"] = time.perf_counter() - t0
    return await task


def fault_drain(args, tmp: Path) -> None:
    drain_py = ROOT / "service" / "drain.py"
    if not drain_py.exists() or "CIFAR2_DRAIN_S" not in drain_py.read_text():
        row("drain: SIGTERM under load", "skipped: this service has no CIFAR2_DRAIN_S drain",
            None)
        return
    bulk = load.Request.post("predict .npy x512", "/predict",
                             npy_bytes(np.zeros((512, 3, 32, 32), np.uint8)), "application/x-npy")
    for fresh in (True, False):
        log = tmp / f"drain-{fresh}.log"
        proc, _ = serve(args.port, log, CIFAR2_WORKERS="2", CIFAR2_DRAIN_S=str(args.drain_s))
        marks: dict = {}
        try:
            results = load.run(sigterm_under_load(args, proc, bulk, fresh, marks))
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                stop(proc)
        term = marks["term"]
        after = [r for r in results if r.done >= term]
        lost = [r for r in after if r.error in ("closed", "reset", "timeout")]
        refused = sum(1 for r in after if r.error == "refused")
        tally = load.tally(after)
        row(f"drain: SIGTERM, 48 clients x 512 images, {'fresh' if fresh else 'keep-alive'} "
            f"connections, CIFAR2_DRAIN_S={args.drain_s}",
            f"{len(results):,} requests, {len(after):,} answered or failed after SIGTERM: "
            + ", ".join(f"{a}: {b}" for a, b in sorted(tally.items()))
            + f"; lost {len(lost)}; refused (no listener any more, not lost) {refused}; "
            f"/readyz 503 after {marks.get('unready', float('nan')) - term:.2f} s; "
            f"exit code {code} after {marks['exit'] - term:.1f} s",
            not lost and code == 0)


async def slowloris(port: int, n: int, t0: float, until: float, closed: list) -> None:
    """n connections trickling one byte a second: half of them the headers, half the body."""
    body = npy_bytes(np.zeros((1, 3, 32, 32), np.uint8))
    head = (f"POST /predict HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()

    async def one(k: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            closed.append("connect")
            return
        data = head + body if k % 2 == 0 else head
        if k % 2:  # the headers at once, then the body byte by byte
            writer.write(head)
            data = body
        i = 0
        try:
            while time.perf_counter() - t0 < until and i < len(data):
                writer.write(data[i:i + 1])
                await writer.drain()
                i += 1
                await asyncio.sleep(1.0)
                if reader.at_eof():
                    closed.append("eof")
                    return
        except OSError:
            closed.append("reset")
        finally:
            writer.close()

    await asyncio.gather(*(one(k) for k in range(n)))


def fault_slow(args, tmp: Path) -> None:
    log = tmp / "slow.log"
    proc, url = serve(args.port, log, CIFAR2_WORKERS="2")
    try:
        requests = mix(has_v2(url), bad=False)
        load.run(load.closed_loop("127.0.0.1", args.port, requests, 8, 2.0))  # warm-up
        base = load.run(load.closed_loop("127.0.0.1", args.port, requests, 8, 15.0))
        closed: list = []

        async def with_slow():
            t0 = time.perf_counter()
            slow = asyncio.ensure_future(slowloris(args.port, 200, t0, 25.0, closed))
            await asyncio.sleep(5.0)  # all 200 connected and trickling
            normal = await load.closed_loop("127.0.0.1", args.port, requests, 8, 15.0)
            await slow
            return normal

        slowed = load.run(with_slow())
    finally:
        stop(proc)
    p99 = [load.percentile([r.latency_ms for r in rs if r.status == 200], 99)
           for rs in (base, slowed)]
    p50 = [load.percentile([r.latency_ms for r in rs if r.status == 200], 50)
           for rs in (base, slowed)]
    failures = load.tally(load.unexpected(base) + load.unexpected(slowed))
    bad = sum(failures.values())
    row("slow clients: 200 connections at 1 byte/s", f"8 normal clients: p50 {p50[0]:.1f} -> "
        f"{p50[1]:.1f} ms, p99 {p99[0]:.1f} -> {p99[1]:.1f} ms ({p99[1] / p99[0]:.2f}x), "
        f"{len(base):,} / {len(slowed):,} requests, {bad} failed {dict(failures)}; slow "
        f"connections closed by "
        f"the server within 25 s: {len(closed)}", p99[1] <= 2 * p99[0] and not bad)


def fault_store(args, tmp: Path) -> None:
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    for how in ("removed", "truncated"):
        copy = tmp / f"store-{how}"
        shutil.copytree(home / "models", copy / "models")
        latest = (copy / "models" / "cifar2-net" / "latest").read_text().strip()
        onnx = copy / "models" / "cifar2-net" / latest / "model.onnx"
        if how == "removed":
            onnx.unlink()
        else:
            onnx.write_bytes(onnx.read_bytes()[:1000])
        log = tmp / f"store-{how}.log"
        env = {**os.environ, "BENTOML_HOME": str(copy), "BENTOML_DO_NOT_TRACK": "True",
               "CIFAR2_WORKERS": "1"}
        t = time.perf_counter()
        proc = subprocess.Popen([BENTOML, "serve", "--port", str(args.port), "--host",
                                 "127.0.0.1"], cwd=ROOT, env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{args.port}"
        ready = body = None
        try:
            while time.perf_counter() - t < 90 and proc.poll() is None:
                try:
                    r = httpx.get(f"{url}/readyz", timeout=2)
                    ready, body = r.status_code, r.text
                    break
                except httpx.TransportError:
                    time.sleep(0.3)
            started = time.perf_counter() - t
            predict = httpx.post(f"{url}/predict", json={"images": [[[[0] * 32] * 32] * 3]},
                                 timeout=10) if ready is not None else None
        finally:
            stop(proc)
        names_file = body is not None and "model.onnx" in body
        names_fix = body is not None and bool(re.search(r"make models|--register|export",
                                                        body or ""))
        row(f"store: cifar2-net model.onnx {how}",
            f"server up after {started:.1f} s (exit code {proc.returncode} if it died); "
            f"/readyz {ready}: {(body or '')[:300]!r}; /predict -> "
            f"{predict.status_code if predict else None}; names the file: {names_file}, "
            f"names the fix: {names_fix}", ready == 503 and names_file and names_fix)


def fault_disconnect(args, tmp: Path) -> None:
    log = tmp / "disconnect.log"
    proc, _ = serve(args.port, log, CIFAR2_WORKERS="2")
    try:
        bulk = load.Request.post("x512", "/predict", npy_bytes(np.zeros((512, 3, 32, 32),
                                                                        np.uint8)),
                                 "application/x-npy").raw
        classify = next(r for r, _ in mix(False, bad=False) if r.name.startswith("classify"))
        load.run(load.closed_loop("127.0.0.1", args.port, mix(False, bad=False), 8, 2.0))
        time.sleep(1.0)
        fds0 = {w.pid: open_fds(w) for w in workers(proc)}
        offset = log.stat().st_size

        async def hang_up(raw: bytes, cut: int, wait: float) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", args.port)
            writer.write(raw[:cut])
            await writer.drain()
            await asyncio.sleep(wait)
            writer.transport.abort()  # RST, like a killed client

        async def run():
            jobs = []
            for k in range(100):
                jobs.append(hang_up(bulk, len(bulk), 0.0))  # whole request, gone at once
                jobs.append(hang_up(bulk, len(bulk) // 2, 0.05))  # half the body
                jobs.append(hang_up(classify.raw, len(classify.raw), 0.002 * k))
            await asyncio.gather(*jobs)

        load.run(run())
        time.sleep(3.0)
        works = load.run(load.closed_loop("127.0.0.1", args.port, mix(False, bad=False), 4, 2.0))
        fds1 = {w.pid: open_fds(w) for w in workers(proc)}
        text = log.read_bytes()[offset:].decode("utf-8", "replace")
    finally:
        stop(proc)
    errors = [line for line in text.splitlines() if "[ERROR]" in line or "Traceback" in line]
    failed = len(load.unexpected(works))
    row("disconnect: 300 clients hang up mid-request",
        f"ERROR lines/tracebacks logged: {len(errors)}"
        + (f" (first: {errors[0][:160]!r})" if errors else "")
        + f"; worker fds before {sorted(fds0.values())}, 3 s after {sorted(fds1.values())}; "
        f"next requests: {len(works):,} sent, {failed} failed", not errors and not failed and all(
            fds1.get(p, 0) <= n + 2 for p, n in fds0.items()))


def fault_paths(args, tmp: Path) -> None:
    log = tmp / "paths.log"
    proc, url = serve(args.port, log, CIFAR2_WORKERS="1")
    try:
        size0 = len(httpx.get(f"{url}/metrics", timeout=10).content)
        rss0 = sum(rss_mb(w) for w in workers(proc))
        reqs = [(load.Request.get(f"p{k}", f"/no-such-page-{k}", (404,)), 1) for k in range(5000)]

        async def run():
            pool = load.Pool("127.0.0.1", args.port, size=32)
            t0 = time.perf_counter()
            return await asyncio.gather(*(load.one(pool, r, t0, 0.0, 60.0) for r, _ in reqs))

        t = time.perf_counter()
        results = load.run(run())
        took = time.perf_counter() - t
        t = time.perf_counter()
        size1 = len(httpx.get(f"{url}/metrics", timeout=120).content)
        size1_s = time.perf_counter() - t
        rss1 = sum(rss_mb(w) for w in workers(proc))
    finally:
        stop(proc)
    statuses = load.tally(results)
    row("paths: 5,000 distinct unknown paths", f"answers {dict(statuses)} in {took:.0f} s; "
        f"/metrics {size0 / 1e3:,.0f} kB -> {size1 / 1e3:,.0f} kB (one GET takes "
        f"{size1_s:.1f} s); worker RSS {rss0:.0f} -> {rss1:.0f} MiB", size1 < 2 * size0)


FAULTS = {"kill": fault_kill, "drain": fault_drain, "slow": fault_slow, "store": fault_store,
          "disconnect": fault_disconnect, "paths": fault_paths}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    p.add_argument("--port", type=int, default=3170)
    p.add_argument("--load", type=float, default=0.5, help="kill: fraction of capacity")
    p.add_argument("--drain-s", type=int, default=2, help="CIFAR2_DRAIN_S for drain")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="faults_"))
    print(f"server logs in {tmp}", file=sys.stderr)
    for name in args.only:
        FAULTS[name](args, tmp)
    print("\n| fault | result | goal met |\n| --- | --- | --- |")
    for fault, result, ok in ROWS:
        print(f"| {fault} | {result} | {ok} |")
    sys.exit(1 if any(ok == "NO" for _, _, ok in ROWS) else 0)


if __name__ == "__main__":
    main()
