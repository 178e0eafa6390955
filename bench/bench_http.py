"""HTTP load benchmark of the service with wrk, next to a raw-uvicorn ceiling in the same run.

    python -m bench.bench_http                     # ~10 min; table + docs/bench_http.png
    python -m bench.bench_http --duration 5 --repeat 1 --concurrency 1 32
    BENTOML_HOME=/tmp/home python -m bench.bench_http --out /tmp/b

Starts `bentoml serve` itself three times: batching on (the defaults), batching off
(CIFAR2_BATCHING=off), and the BentoML path for .npy bodies (CIFAR2_FAST_NPY=off), and
bench/raw_asgi.py (the ceiling: uvicorn, no framework, no model, same request bodies), which
stays up on the next port: each single-image /predict run is paired with a ceiling run right
before it, so "% of ceiling" compares runs that saw the same load from other jobs.
Single-image /predict (.npy body) and /classify (multipart PNG) at each concurrency, plus bulk
/predict with 1024 images per request. With --repeat N every cell is the median of N runs.
Needs wrk (`apt-get install wrk`) and cifar2-net / cifar2-dense in the model store.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "cifar2benchboundary"

# wrk script: the body and content type come from files; `done` prints one JSON line.
LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
function done(s, lat, req)
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_ms": %f, "p99_ms": %f}\\n',
    s.requests, s.duration / 1e6, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, lat:percentile(50) / 1e3, lat:percentile(99) / 1e3))
end
"""


def bodies(tmp: Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (body file, content type, images per request)."""
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    bulk = rng.integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(one[0].transpose(1, 2, 0)).save(png, "PNG")
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; "
                 f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + \
        png.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()
    out = {}
    for name, data, ctype, n in [
        ("npy1", _npy(one), "application/x-npy", 1),
        ("npy1024", _npy(bulk), "application/x-npy", 1024),
        ("png1", multipart, f"multipart/form-data; boundary={BOUNDARY}", 1),
    ]:
        path = tmp / name
        path.write_bytes(data)
        out[name] = (path, ctype, n)
    return out


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def wrk(url: str, body: tuple[Path, str, int], conc: int, seconds: float, lua: Path) -> dict:
    path, ctype, _ = body
    env = {**os.environ, "BENCH_BODY": str(path), "BENCH_CTYPE": ctype}
    cmd = ["wrk", f"-t{min(conc, 2)}", f"-c{conc}", f"-d{seconds:g}s", "--timeout", "5s",
           "-s", str(lua), url]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode or line is None:
        sys.exit(f"wrk failed: {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    r = json.loads(line[len("RESULT "):])
    r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    r["rps"] = r["requests"] / r["seconds"]
    return r


def start(cmd: list[str], env: dict, ready_url: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{' '.join(cmd)} exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=2).status_code in (200, 405):
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    sys.exit(f"{' '.join(cmd)} not ready in 120 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--duration", type=float, default=8, help="seconds per wrk run")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--port", type=int, default=3100)
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG/JSON go")
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="bench_http_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    data = bodies(tmp)
    base = f"http://127.0.0.1:{args.port}"
    ceiling_url = f"http://127.0.0.1:{args.port + 1}/predict"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    # server -> [(route, body, concurrency list)]
    plan = {}
    for mode in ("on", "off"):
        plan[f"batching {mode}"] = [("predict", "npy1", args.concurrency),
                                    ("classify", "png1", args.concurrency),
                                    ("predict", "npy1024", [1, 2, 4])]
    # The same .npy requests through BentoML's own IO layer and CorkDispatcher.
    plan["bentoml path"] = [("predict", "npy1", args.concurrency)]
    paired = sum(len(c) for v in plan.values() for r, b, c in v if b == "npy1")
    runs = (sum(len(c) for v in plan.values() for _, _, c in v) + paired) * args.repeat
    bar = tqdm(total=runs, desc="wrk runs", unit="run")
    results = []
    model_only = [ort_images_per_s()]
    # The ceiling runs all along on the next port; every single-image /predict run is paired
    # with a ceiling run just before it, so both see the same load from other jobs.
    ceiling = start([sys.executable, "-m", "bench.raw_asgi", "--port", str(args.port + 1),
                     "--workers", "1"], env, ceiling_url, tmp / "raw.log")
    try:
        for server, cells in plan.items():
            cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "--port",
                   str(args.port), "--host", "127.0.0.1"]
            senv = {**env, "CIFAR2_BATCHING": "off" if server == "batching off" else "on",
                    "CIFAR2_FAST_NPY": "off" if server == "bentoml path" else "on"}
            proc = start(cmd, senv, base + "/readyz", tmp / "serve.log")
            try:
                for route, body, concs in cells:
                    for c in concs:
                        reps, ceil = [], []
                        for _ in range(args.repeat):
                            if body == "npy1":
                                ceil.append(wrk(ceiling_url, data[body], c, args.duration, lua))
                                bar.update()
                            reps.append(wrk(f"{base}/{route}", data[body], c, args.duration,
                                            lua))
                            bar.update()
                        if ceil:
                            results.append(summarize(f"ceiling ({server})", route, body, data,
                                                     c, ceil))
                        results.append(summarize(server, route, body, data, c, reps))
            finally:
                stop(proc)
    finally:
        stop(ceiling)
    bar.close()
    model_only.append(ort_images_per_s())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_http.json").write_text(json.dumps(
        {"machine": machine(), "duration_s": args.duration, "repeat": args.repeat,
         "model_only_images_per_s": model_only, "results": results}, indent=1))
    print(table(results))
    print(f"\nmodel only (ORT in-process, batch 1024, 2 threads, no HTTP), before and after: "
          f"{model_only[0]:,.0f} and {model_only[1]:,.0f} images/s")
    plot(results, args.out / "bench_http.png")
    print(f"\nwrote {args.out / 'bench_http.json'} and {args.out / 'bench_http.png'}")


def summarize(server, route, body, data, c, reps) -> dict:
    med = {k: statistics.median(r[k] for r in reps) for k in ("rps", "p50_ms", "p99_ms", "errors")}
    return {"server": server, "route": route, "body": body, "images_per_request": data[body][2],
            "concurrency": c, **med, "images_per_s": med["rps"] * data[body][2], "runs": reps}


def ort_images_per_s(seconds: float = 3.0) -> float:
    """The compute bound for bulk /predict: the served convnet's ONNX file run in-process on
    two threads (one per core, as the two workers do), batch 1024, no HTTP at all."""
    import threading

    import bentoml

    from service.runtime import open_serving_session

    path = bentoml.models.get(os.environ.get("CIFAR2_CONVNET", "cifar2-net:latest")).path_of(
        "model.onnx")
    session, _ = open_serving_session(path, "cpu", 1)
    x = np.random.default_rng(0).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    session.run(["probs"], {"images": x})
    counts = [0, 0]

    def work(i: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            session.run(["probs"], {"images": x})
            counts[i] += len(x)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def table(results: list[dict]) -> str:
    ceiling = {(r["server"][len("ceiling ("):-1], r["concurrency"]): r["rps"]
               for r in results if r["server"].startswith("ceiling")}
    rows = ["| server | request | c | req/s | images/s | p50 ms | p99 ms | errors | % of ceiling |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        what = f"/{r['route']} {r['images_per_request']} img ({r['body'][:3]})"
        pct = ""
        key = (r["server"], r["concurrency"])
        if r["images_per_request"] == 1 and key in ceiling:
            pct = f"{100 * r['rps'] / ceiling[key]:.1f}%"
        rows.append(f"| {r['server']} | {what} | {r['concurrency']} | {r['rps']:,.0f} | "
                    f"{r['images_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                    f"{r['errors']:.0f} | {pct} |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[dict]] = {}
    for r in results:
        if r["images_per_request"] != 1:
            continue
        if r["server"].startswith("ceiling"):  # one ceiling line: the one paired with "on"
            if r["server"] == "ceiling (batching on)":
                series.setdefault("ceiling (raw uvicorn): /predict", []).append(r)
            continue
        series.setdefault(f"{r['server']}: /{r['route']}", []).append(r)
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r["concurrency"])
        ax.plot([r["rps"] for r in rs], [r["p99_ms"] for r in rs], marker="o", label=name)
        for r in rs:
            ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p99_ms"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s, 1 image each)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"CIFAR-2 service vs raw uvicorn ceiling, wrk ({machine()})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, no GPU" if not shutil.which("nvidia-smi") else \
        f"{os.cpu_count()} cores, {cpu}, GPU present"


if __name__ == "__main__":
    main()
