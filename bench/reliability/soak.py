"""Soak: a long open-loop run at ~70% of capacity on a mix of every route, bad input included.

    python -m bench.reliability.soak                      # 10 minutes; table + docs/reliability_soak.png
    python -m bench.reliability.soak --minutes 1 --out /tmp/soak   # a quick look

Measures the capacity first (64 closed-loop clients, like overload.py), then sends the mix
(bench/reliability/server.py) at --load x capacity for --minutes. Every 5 s it samples each
worker's RSS and open file descriptors. Reports per minute: requests, p50/p99 of the replies
(from their due time), errors other than the intended 4xx; and per worker: RSS at the start, after
the first minute (warm-up) and at the end, and fds. Goals: 0 errors, RSS growth after warm-up
< 10%, p50/p99 and fds flat. Exit 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from bench.reliability import load
from bench.reliability.server import has_v2, mix, open_fds, rss_mb, serve, stop, workers

ROOT = Path(__file__).resolve().parents[2]


async def sample(proc, t0: float, every: float, until: float, out: list) -> None:
    """(t, pid, RSS MiB, fds) of each worker every ``every`` s."""
    while time.perf_counter() - t0 < until:
        t = time.perf_counter() - t0
        for w in workers(proc):
            try:
                out.append((t, w.pid, rss_mb(w), open_fds(w)))
            except Exception:  # noqa: BLE001, S112 - a worker may go away between calls
                continue
        await asyncio.sleep(every)


def per_minute(results: list[load.Result], minutes: int) -> list[dict]:
    rows = []
    for m in range(minutes):
        rs = [r for r in results if m * 60 <= r.scheduled < (m + 1) * 60]
        lat = [r.latency_ms for r in rs if not r.error]
        rows.append({"minute": m + 1, "requests": len(rs),
                     "p50_ms": load.percentile(lat, 50), "p99_ms": load.percentile(lat, 99),
                     "errors": len(load.unexpected(rs)),
                     "intended_4xx": sum(1 for r in rs if r.expected and r.status != 200)})
    return rows


def memory_rows(samples: list, warm_s: float) -> list[dict]:
    rows = []
    for pid in sorted({s[1] for s in samples}):
        mine = [s for s in samples if s[1] == pid]
        warm = next((s for s in mine if s[0] >= warm_s), mine[-1])
        rows.append({"pid": pid, "rss_start": mine[0][2], "rss_warm": warm[2],
                     "rss_end": mine[-1][2], "growth_pct": (mine[-1][2] / warm[2] - 1) * 100,
                     "fds_start": mine[0][3], "fds_warm": warm[3], "fds_end": mine[-1][3],
                     "fds_max": max(s[3] for s in mine)})
    return rows


def plot(minutes: list[dict], samples: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [m["minute"] for m in minutes]
    axes[0].plot(x, [m["p50_ms"] for m in minutes], "o-", label="p50")
    axes[0].plot(x, [m["p99_ms"] for m in minutes], "s-", label="p99")
    axes[0].set(xlabel="minute", ylabel="latency ms (from due time)", title="latency per minute")
    axes[0].set_ylim(bottom=0)
    axes[0].legend()
    for k, pid in enumerate(sorted({s[1] for s in samples})):
        mine = [s for s in samples if s[1] == pid]
        t = [s[0] / 60 for s in mine]
        axes[1].plot(t, [s[2] for s in mine], label=f"worker {k + 1} (pid {pid})")
        axes[2].plot(t, [s[3] for s in mine], label=f"worker {k + 1}")
    axes[1].set(xlabel="minute", ylabel="RSS MiB", title="worker memory")
    axes[1].set_ylim(bottom=0)
    axes[2].set(xlabel="minute", ylabel="open fds", title="worker file descriptors")
    axes[2].set_ylim(bottom=0)
    for ax in axes[1:]:
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity")
    p.add_argument("--rate", type=float, help="requests/s; default: --load x measured capacity")
    p.add_argument("--images", type=int, default=16,
                   help="images in the small requests of the mix (bench/reliability/server.py)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port", type=int, default=3160)
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG/JSON go")
    args = p.parse_args()

    log = Path(tempfile.mkdtemp(prefix="soak_")) / "serve.log"
    print(f"starting bentoml serve (CIFAR2_WORKERS={args.workers}, log: {log})", file=sys.stderr)
    proc, url = serve(args.port, log, CIFAR2_WORKERS=str(args.workers))
    samples: list = []
    try:
        requests = mix(has_v2(url), n=args.images)
        load.run(load.closed_loop("127.0.0.1", args.port, requests, 16, 2.0))  # warm-up
        seconds = 10.0
        cap = len(load.run(load.closed_loop("127.0.0.1", args.port, requests, 64,
                                            seconds))) / seconds
        rate = args.rate or cap * args.load
        print(f"capacity {cap:,.0f} replies/s; soak at {rate:,.0f}/s for {args.minutes} min",
              file=sys.stderr)
        duration = args.minutes * 60.0
        bar = tqdm(total=int(rate * duration), desc="soak", unit="req", mininterval=5)
        log_start = log.stat().st_size

        async def run():
            t0 = time.perf_counter()
            sampler = asyncio.ensure_future(sample(proc, t0, 5.0, duration + 5, samples))
            results = await load.open_loop("127.0.0.1", args.port, requests, rate, duration,
                                           progress=bar.update, t0=t0)
            await sampler
            return results

        results = load.run(run())
        bar.close()
        server_log = log.read_bytes()[log_start:].decode("utf-8", "replace")
    finally:
        stop(proc)

    minutes = per_minute(results, args.minutes)
    memory = memory_rows(samples, 60.0)
    faults = [line for line in server_log.splitlines() if "[ERROR]" in line
              or "Traceback" in line]
    print(f"\ncapacity {cap:,.0f} replies/s; soak at {rate:,.0f} req/s ({rate / cap:.0%}) for "
          f"{args.minutes} min, {len(results):,} requests; outcomes: "
          + ", ".join(f"{k}: {v:,}" for k, v in sorted(load.tally(results).items())))
    print("\n| minute | requests | p50 ms | p99 ms | intended 4xx | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in minutes:
        print(f"| {m['minute']} | {m['requests']:,} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
              f"{m['intended_4xx']:,} | {m['errors']} |")
    print("\n| worker pid | RSS start MiB | after 1 min | end | growth after warm-up | "
          "fds start | after 1 min | end | max |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in memory:
        print(f"| {w['pid']} | {w['rss_start']:.1f} | {w['rss_warm']:.1f} | {w['rss_end']:.1f} | "
              f"{w['growth_pct']:+.1f}% | {w['fds_start']} | {w['fds_warm']} | {w['fds_end']} | "
              f"{w['fds_max']} |")
    print(f"\nERROR lines or tracebacks in the server log during the soak: {len(faults)}")
    for line in faults[:5]:
        print("  " + line[:200])
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "reliability_soak.png"
    plot(minutes, samples, png, f"soak: {rate:,.0f} req/s ({rate / cap:.0%} of capacity), "
         f"{args.minutes} min, {len(results):,} requests")
    (args.out / "reliability_soak.json").write_text(json.dumps(
        {"capacity": cap, "rate": rate, "minutes": minutes, "workers": memory,
         "samples": samples, "tally": load.tally(results), "server_faults": faults[:20]},
        indent=1))
    print(f"wrote {png} and {args.out / 'reliability_soak.json'}")
    bad = sum(m["errors"] for m in minutes) or faults or len({w["pid"] for w in memory}) \
        != args.workers or any(w["growth_pct"] >= 10 for w in memory)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
