"""A small HTTP/1.1 load generator (asyncio, keep-alive, one fixed request), for machines
without wrk: the GPU machine may have none, and nothing can be installed there.

    python -m bench.gpu.loadgen http://127.0.0.1:3000/predict --body x.npy \
        --header 'Content-Type: application/x-npy' -c 32 --seconds 5 [--processes 4]

Each connection sends the request, reads the whole reply (Content-Length or chunked), records
the latency and sends again, until the time is up. Connections are split over --processes
worker processes so that the client is not the bottleneck; the parent merges their counts and
latencies. Prints one JSON line: requests, rps (replies), ok_rps (2xx replies), p50_ms, p99_ms,
errors (non-2xx replies and broken connections), unanswered (no reply GRACE_S after the end),
statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

GRACE_S = 5.0  # how long a request in flight at the end may still take: then unanswered


def request_bytes(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    head = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {u.netloc}",
            f"Content-Length: {len(body)}", *headers, "", ""]
    return u.hostname, u.port or 80, "\r\n".join(head).encode() + body


async def _read_reply(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    return status


async def _connection(host, port, request, deadline, latencies, statuses) -> tuple[int, int]:
    """(errors, unanswered): non-2xx replies and broken connections; requests with no reply
    GRACE_S after the end of the run."""
    errors, unanswered, writer = 0, 0, None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        timeout=GRACE_S)
            t0 = time.perf_counter()
            writer.write(request)
            # A reply that never comes must not hold the run past its end: an error instead.
            status = await asyncio.wait_for(_read_reply(reader),
                                            timeout=deadline + GRACE_S - time.perf_counter())
            end = time.perf_counter()
            latencies.append((end, end - t0, 200 <= status < 300))
            statuses[status] = statuses.get(status, 0) + 1
            errors += not 200 <= status < 300
        except asyncio.TimeoutError:  # (an OSError too: caught first)
            unanswered += 1
            if writer is not None:
                writer.close()
            writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError):
            errors += 1
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()
    return errors, unanswered


async def _worker(url, body, headers, connections, seconds) -> dict:
    host, port, request = request_bytes(url, body, headers)
    latencies: list[tuple[float, float, bool]] = []  # (end, latency, 2xx) per reply
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    deadline = t0 + seconds
    counts = await asyncio.gather(*(_connection(host, port, request, deadline, latencies,
                                                statuses) for _ in range(connections)))
    # The rate counts the replies that came within the run's time; one late reply (or a hung
    # request waiting out GRACE_S) must not stretch the window it is divided by.
    in_time = sum(1 for end, _, _ in latencies if end <= deadline)
    ok_in_time = sum(1 for end, _, ok in latencies if ok and end <= deadline)
    return {"seconds": seconds, "in_time": in_time, "ok_in_time": ok_in_time,
            "errors": sum(c[0] for c in counts),
            "unanswered": sum(c[1] for c in counts),
            "statuses": statuses, "latencies": [lat for _, lat, _ in latencies],
            "overrun_s": time.perf_counter() - deadline}


def run(url: str, body: bytes, headers: list[str], concurrency: int, seconds: float,
        processes: int = 1) -> dict:
    """Load ``url`` with ``concurrency`` connections over ``processes`` processes; merged."""
    processes = max(1, min(processes, concurrency))
    split = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.gpu.loadgen", url, "--body", str(Path(tmp) / "body"),
             "-c", str(c), "--seconds", str(seconds), "--raw", str(Path(tmp) / f"{i}.npy"),
             *(a for h in headers for a in ("--header", h))],
            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
            for i, c in enumerate(split)]
        try:
            parts = [json.loads(p.communicate(timeout=seconds + 3 * GRACE_S)[0]) for p in procs]
        finally:
            for p in procs:  # none outlives the run, whatever went wrong
                p.kill()
                p.wait()
        latencies = np.concatenate([np.load(Path(tmp) / f"{i}.npy") for i in range(processes)])
    return summarize(parts, latencies, concurrency)


def summarize(parts: list[dict], latencies: np.ndarray, concurrency: int) -> dict:
    statuses: dict[str, int] = {}
    for part in parts:
        for k, v in part["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    seconds = max(p["seconds"] for p in parts)
    ms = latencies * 1000 if len(latencies) else np.array([np.nan])
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": seconds,
            "rps": sum(p["in_time"] for p in parts) / seconds,
            # Only 2xx replies did the work: images/s counts these (a 503 is answered quickly).
            "ok_rps": sum(p["ok_in_time"] for p in parts) / seconds,
            "overrun_s": max(p["overrun_s"] for p in parts), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": sum(p["errors"] for p in parts),
            "unanswered": sum(p["unanswered"] for p in parts),
            "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--body", type=Path, required=True)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--processes", type=int, default=max(1, (os.cpu_count() or 1) // 4))
    p.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # worker mode: latencies file
    args = p.parse_args(argv)
    body = args.body.read_bytes()
    if args.raw:  # one worker process: its own connections, latencies to a file
        try:
            from uvloop import run as run_loop  # the service's event loop, faster than asyncio's
        except ImportError:
            run_loop = asyncio.run
        part = run_loop(_worker(args.url, body, args.header, args.concurrency, args.seconds))
        np.save(args.raw, np.asarray(part.pop("latencies"), dtype=np.float64))
        print(json.dumps(part))
        return 0
    print(json.dumps(run(args.url, body, args.header, args.concurrency, args.seconds,
                         args.processes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
