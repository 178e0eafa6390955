"""HTTP load benchmark of the service with wrk, next to a like-for-like ceiling in the same run.

    python -m bench.bench_http                     # ~12 min; tables + docs/bench_http.png
    python -m bench.bench_http --duration 5 --repeat 1 --concurrency 32
    BENTOML_HOME=/tmp/home python -m bench.bench_http --out /tmp/b

Starts `bentoml serve` once per mode: "fast path" (the defaults: every route through the
request layer, service/routes.py), "bentoml path" (CIFAR2_FAST_PATH=off: /predict and /classify
through BentoML's IO layer) and, with --modes, "batching off" (CIFAR2_BATCHING=off). The
ceiling, bench/raw_asgi.py, is uvicorn with the service's own decoders and no framework,
batcher or model, with as many workers as the service; it stays up on the next port, and each
single-image run is paired with a ceiling run of the same body right before it, so "% of
ceiling" compares runs that saw the same load from other jobs. The ceiling is stock uvicorn,
which writes each reply in two send() calls; the service's workers write it in one
(service/onewrite.py). So at c=32 a second ceiling, the same app with --one-write, is run too:
the share of that one is what serving costs on the very HTTP stack the service runs on.
Single-image requests of each encoding: V2 binary infer (tritonclient's form), JSON /predict
(bentoml.SyncHTTPClient's form), .npy /predict, /classify with one JPEG; plus bulk /predict
with 1,024 images per request against ONNX Runtime in-process, measured for 2 s right before
and right after each bulk run, the run's bound being the mean of the two (the same pairing,
since the machine's speed drifts by 10% and more over a full run, at times within a minute;
"% of ceiling" of a bulk row is of that bound). The decoders are also timed on
their own, in-process, to say what share of a request decoding is. With --repeat N every cell
is the median of N runs. Needs wrk (`apt-get install wrk`) and cifar2-net / cifar2-dense in
the model store.
"""

from __future__ import annotations

import argparse
import io
import itertools
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

# wrk script: the body, content type and any extra header come from files and the environment;
# `done` prints one JSON line.
LUA = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local k, v = extra:match("^([^:]+):%s*(.*)$"); wrk.headers[k] = v
end
function done(s, lat, req)
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_ms": %f, "p99_ms": %f}\\n',
    s.requests, s.duration / 1e6, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, lat:percentile(50) / 1e3, lat:percentile(99) / 1e3))
end
"""

# body name -> route; the single-image bodies are the encodings users send most.
ROUTES = {"v2bin1": "/v2/models/convnet/infer", "json1": "/predict", "npy1": "/predict",
          "jpg1": "/classify", "png1": "/classify", "npy1024": "/predict"}
SINGLE = ("v2bin1", "json1", "npy1", "jpg1")
LABELS = {"v2bin1": "V2 infer, binary", "json1": "/predict, JSON", "npy1": "/predict, .npy",
          "jpg1": "/classify, JPEG", "png1": "/classify, PNG", "npy1024": "/predict, .npy"}


def bodies(tmp: Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (body file, content type, images per request). A body that needs one more
    header (V2's Inference-Header-Content-Length) has it in a sidecar file NAME.header."""
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    bulk = rng.integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(one[0].transpose(1, 2, 0)).save(png, "PNG")
    # A smooth, photo-like 32x32 picture, so the JPEG is of usual size.
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    small.resize((32, 32), Image.Resampling.BICUBIC).save(jpg, "JPEG", quality=90)
    v2_header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                        "datatype": "UINT8",
                                        "parameters": {"binary_data_size": 3072}}],
                            "parameters": {"binary_data_output": True}}).encode()
    out = {}
    for name, data, ctype, n, header in [
        ("v2bin1", v2_header + one.tobytes(), "application/octet-stream", 1,
         f"Inference-Header-Content-Length: {len(v2_header)}"),
        ("json1", json.dumps({"images": one.tolist()}).encode(), "application/json", 1, ""),
        ("npy1", _npy(one), "application/x-npy", 1, ""),
        ("npy1024", _npy(bulk), "application/x-npy", 1024, ""),
        ("jpg1", _multipart(jpg.getvalue(), "x.jpg"), f"multipart/form-data; boundary={BOUNDARY}",
         1, ""),
        ("png1", _multipart(png.getvalue(), "x.png"), f"multipart/form-data; boundary={BOUNDARY}",
         1, ""),
    ]:
        path = tmp / name
        path.write_bytes(data)
        if header:
            path.with_suffix(".header").write_text(header)
        out[name] = (path, ctype, n)
    return out


def _multipart(data: bytes, filename: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def wrk(url: str, body: tuple[Path, str, int], conc: int, seconds: float, lua: Path) -> dict:
    path, ctype, _ = body
    header = path.with_suffix(".header")
    env = {**os.environ, "BENCH_BODY": str(path), "BENCH_CTYPE": ctype,
           "BENCH_HEADER": header.read_text() if header.exists() else ""}
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


MODES = {  # server mode -> its environment
    "fast path": {},
    "bentoml path": {"CIFAR2_FAST_PATH": "off"},
    "batching off": {"CIFAR2_BATCHING": "off"},
}


def plan(mode: str, concurrency: list[int]) -> list[tuple[str, list[int]]]:
    """(body, concurrencies) measured on a server mode."""
    if mode == "fast path":
        return [(b, concurrency) for b in SINGLE] + [("npy1024", [1, 2, 4])]
    if mode == "bentoml path":  # V2 has no BentoML path
        return [(b, [32]) for b in SINGLE if b != "v2bin1"]
    return [("npy1", concurrency), ("npy1024", [1, 2, 4])]


def one_write_cell(mode: str, body: str, data, c: int) -> bool:
    """Whether this cell also runs the one-write ceiling: single images at c=32, fast path."""
    return mode == "fast path" and data[body][2] == 1 and c == 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    p.add_argument("--modes", nargs="+", default=["fast path", "bentoml path"],
                   choices=list(MODES))
    p.add_argument("--bodies", nargs="+", choices=sorted(ROUTES),
                   help="only these request bodies (default: all of the mode's)")
    p.add_argument("--port", type=int, default=3100)
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNG/JSON go")
    p.add_argument("--from-json", type=Path, help="print the tables of a saved run, run nothing")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["results"], saved["decode_us"], saved["workers"],
               saved["model_only_images_per_s"], saved.get("cpu_chunk", 1024),
               saved.get("model_one_call_images_per_s"))
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="bench_http_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    data = bodies(tmp)
    base = f"http://127.0.0.1:{args.port}"
    ceiling_base = f"http://127.0.0.1:{args.port + 1}"
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    workers = env.get("CIFAR2_WORKERS", "2")
    plans = {mode: [(b, cs) for b, cs in plan(mode, args.concurrency)
                    if not args.bodies or b in args.bodies] for mode in args.modes}
    runs = sum(1 + (data[b][2] == 1) + one_write_cell(mode, b, data, c)
               for mode, cells in plans.items() for b, cs in cells for c in cs) * args.repeat
    decode_us = decode_costs(data)
    bar = tqdm(total=runs, desc="wrk runs", unit="run")
    results = []
    # The bound bulk /predict is held to: the model run in-process as the service runs it.
    from service import config

    chunk = config.CPU_CHUNK or 1024
    model_only, one_call = [ort_images_per_s(chunk)], [ort_images_per_s(1024)]
    # Like for like: the same decoders and as many worker processes as the service.
    ceiling = start([sys.executable, "-m", "bench.raw_asgi", "--port", str(args.port + 1),
                     "--workers", workers], env, ceiling_base + "/predict", tmp / "raw.log")
    one_write_base = f"http://127.0.0.1:{args.port + 2}"
    one_write = start([sys.executable, "-m", "bench.raw_asgi", "--port", str(args.port + 2),
                       "--workers", workers, "--one-write"], env, one_write_base + "/predict",
                      tmp / "raw1.log")
    try:
        for mode, cells in plans.items():
            cmd = [str(Path(sys.executable).with_name("bentoml")), "serve", "--port",
                   str(args.port), "--host", "127.0.0.1"]
            proc = start(cmd, {**env, **MODES[mode]}, base + "/readyz", tmp / "serve.log")
            try:
                for body, concs in cells:
                    route = ROUTES[body]
                    wrk(base + route, data[body], 8, 1, lua)  # warm-up
                    for c in concs:
                        reps, ceil, ceil1, edges = [], [], [], []
                        also_one_write = one_write_cell(mode, body, data, c)
                        for _ in range(args.repeat):
                            if data[body][2] > 1 and not edges:  # bulk: bound before it
                                edges.append(ort_images_per_s(chunk, seconds=2))
                            if data[body][2] == 1:
                                ceil.append(wrk(ceiling_base + route, data[body], c,
                                                args.duration, lua))
                                bar.update()
                            if also_one_write:
                                ceil1.append(wrk(one_write_base + route, data[body], c,
                                                 args.duration, lua))
                                bar.update()
                            reps.append(wrk(base + route, data[body], c, args.duration, lua))
                            bar.update()
                            if edges:  # and after it: the next run's "before" too
                                edges.append(ort_images_per_s(chunk, seconds=2))
                        if ceil:
                            results.append(summarize(f"ceiling ({mode})", body, data, c, ceil))
                        if ceil1:
                            results.append(summarize(f"one-write ceiling ({mode})", body, data,
                                                     c, ceil1))
                        results.append(summarize(mode, body, data, c, reps))
                        if edges:
                            results[-1]["bound_images_per_s"] = paired_bound(edges)
            finally:
                stop(proc)
    finally:
        stop(ceiling)
        stop(one_write)
    bar.close()
    model_only.append(ort_images_per_s(chunk))
    one_call.append(ort_images_per_s(1024))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_http.json").write_text(json.dumps(
        {"machine": machine(), "duration_s": args.duration, "repeat": args.repeat,
         "workers": int(workers), "model_only_images_per_s": model_only, "cpu_chunk": chunk,
         "model_one_call_images_per_s": one_call,
         "decode_us": decode_us, "results": results}, indent=1))
    report(results, decode_us, int(workers), model_only, chunk, one_call)
    plot(results, args.out / "bench_http.png")
    print(f"\nwrote {args.out / 'bench_http.json'} and {args.out / 'bench_http.png'}")


def report(results: list[dict], decode_us: dict, workers: int, model_only: list[float],
           chunk: int = 1024, one_call: list[float] | None = None) -> None:
    print(table(results))
    print()
    print(summary_table(results))
    print()
    print(decode_table(decode_us, results, workers))
    ort = statistics.median(model_only)
    print(f"\nmodel only (ORT in-process, 1,024 images in calls of {chunk}, as the service "
          f"runs them, 2 threads, no HTTP), before and after: {model_only[0]:,.0f} and "
          f"{model_only[1]:,.0f} images/s")
    if one_call:
        print(f"the same in one call of 1,024: {one_call[0]:,.0f} and {one_call[1]:,.0f} "
              "images/s")
    for r in results:
        if r["body"] == "npy1024" and r["server"] == "fast path":
            bound = r.get("bound_images_per_s", ort)  # runs saved before the pairing: one bound
            print(f"bulk /predict c={r['concurrency']}: {r['images_per_s']:,.0f} images/s = "
                  f"{r['images_per_s'] / bound:.0%} of in-process ORT ({bound:,.0f}, measured "
                  f"{'around each run' if 'bound_images_per_s' in r else 'as above'})")


def summary_table(results: list[dict], c: int = 32) -> str:
    """One row per single-image request at concurrency c: each path against its ceiling."""
    cell = {(r["server"], r["body"]): r for r in results if r["concurrency"] == c}
    rows = [(f"| request (1 image, c={c}) | req/s | p99 ms | ceiling req/s | % of ceiling | "
            "one-write ceiling req/s | % of it | BentoML path req/s | % of its ceiling |"),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for body in SINGLE:
        fast, ceil = cell.get(("fast path", body)), cell.get(("ceiling (fast path)", body))
        if not fast or not ceil:
            continue
        slow, slow_ceil = cell.get(("bentoml path", body)), cell.get(("ceiling (bentoml path)",
                                                                        body))
        slow_cells = (f"{slow['rps']:,.0f} | {100 * slow['rps'] / slow_ceil['rps']:.1f}%"
                      if slow and slow_ceil else "none | none")
        one = cell.get(("one-write ceiling (fast path)", body))
        one_cells = (f"{one['rps']:,.0f} | {100 * fast['rps'] / one['rps']:.1f}%" if one
                     else "none | none")
        rows.append(f"| {LABELS[body]} | {fast['rps']:,.0f} | {fast['p99_ms']:.1f} | "
                    f"{ceil['rps']:,.0f} | {100 * fast['rps'] / ceil['rps']:.1f}% | "
                    f"{one_cells} | {slow_cells} |")
    return "\n".join(rows)


def summarize(server, body, data, c, reps) -> dict:
    med = {k: statistics.median(r[k] for r in reps) for k in ("rps", "p50_ms", "p99_ms", "errors")}
    return {"server": server, "route": ROUTES[body], "body": body,
            "images_per_request": data[body][2], "concurrency": c, **med,
            "images_per_s": med["rps"] * data[body][2], "runs": reps}


def decode_costs(data, seconds: float = 0.5) -> dict[str, float]:
    """Median microseconds of the service's own decoder on each single-image body, in-process:
    what the request layer spends before the batcher (bench/raw_asgi.py runs the same)."""
    from bench.raw_asgi import decode
    from service.routes import Request

    out = {}
    for name in SINGLE:
        path, ctype, _ = data[name]
        headers = [(b"content-type", ctype.encode())]
        sidecar = path.with_suffix(".header")
        if sidecar.exists():
            k, v = sidecar.read_text().split(":", 1)
            headers.append((k.strip().lower().encode(), v.strip().encode()))
        scope = {"type": "http", "method": "POST", "path": ROUTES[name], "headers": headers}
        body = path.read_bytes()

        async def one(scope=scope, body=body):
            await decode(scope["path"], Request(scope, body))

        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            _run_once(one)
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times) * 1e6, 1)
    return out


def _run_once(coro_fn) -> None:
    """Drive a coroutine that never awaits anything real, without an event loop's overhead."""
    coro = coro_fn()
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the decoder awaited something; time it with an event loop")


def paired_bound(edges: list[float]) -> float:
    """A bulk cell's bound from ``edges``, the bound measured before its first run and after
    each run: the median over the runs of the mean of the two around each."""
    return statistics.median((a + b) / 2 for a, b in itertools.pairwise(edges))


def ort_images_per_s(chunk: int, seconds: float = 3.0, threads: int = 2) -> float:
    """The compute bound for bulk /predict: the served convnet's ONNX file run in-process on
    ``threads`` threads (one per core, as the workers do), 1,024 images at a time in ORT calls
    of ``chunk`` images (as the service runs them: CIFAR2_CPU_CHUNK; 1,024 = one call), no
    HTTP. Each thread runs on the calling thread's CPUs."""
    import threading

    import bentoml

    from service.runtime import open_serving_session

    path = bentoml.models.get(os.environ.get("CIFAR2_CONVNET", "cifar2-net:latest")).path_of(
        "model.onnx")
    session, _ = open_serving_session(path, "cpu", 1)
    x = np.random.default_rng(0).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    session.run(["probs"], {"images": x[:chunk]})
    counts = [0] * threads

    def work(i: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for a in range(0, len(x), chunk):
                session.run(["logits", "probs"], {"images": x[a:a + chunk]})
            counts[i] += len(x)

    running = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in running:
        t.start()
    for t in running:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def table(results: list[dict]) -> str:
    ceiling = {(r["server"][len("ceiling ("):-1], r["body"], r["concurrency"]): r["rps"]
               for r in results if r["server"].startswith("ceiling")}
    rows = ["| server | request | c | req/s | images/s | p50 ms | p99 ms | errors | % of ceiling |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        what = f"{LABELS[r['body']]}, {r['images_per_request']} img"
        key = (r["server"], r["body"], r["concurrency"])
        pct = (f"{100 * r['rps'] / ceiling[key]:.1f}%" if key in ceiling else
               f"{100 * r['images_per_s'] / r['bound_images_per_s']:.1f}% (ORT)"
               if "bound_images_per_s" in r else "")
        rows.append(f"| {r['server']} | {what} | {r['concurrency']} | {r['rps']:,.0f} | "
                    f"{r['images_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                    f"{r['errors']:.0f} | {pct} |")
    return "\n".join(rows)


def decode_table(decode_us: dict[str, float], results: list[dict], workers: int,
                 c: int = 32) -> str:
    """Decoding's share of a request: its in-process cost against the worker time one request
    gets at concurrency c on the fast path (workers / req/s)."""
    rows = [f"| request | decode us (in-process) | worker us per request at c={c} | decode share |",
            "| --- | ---: | ---: | ---: |"]
    for body, us in decode_us.items():
        r = next((r for r in results if r["server"] == "fast path" and r["body"] == body
                  and r["concurrency"] == c), None)
        per_request = workers * 1e6 / r["rps"] if r else float("nan")
        rows.append(f"| {LABELS[body]} | {us:,.1f} | {per_request:,.0f} | "
                    f"{100 * us / per_request:.1f}% |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if r["images_per_request"] == 1 and r["server"] in ("fast path", "ceiling (fast path)"):
            series.setdefault((r["server"], r["body"]), []).append(r)
    for i, body in enumerate(SINGLE):
        color = f"C{i}"
        for server, style in (("fast path", "-o"), ("ceiling (fast path)", ":x")):
            rs = sorted(series.get((server, body), []), key=lambda r: r["concurrency"])
            if not rs:
                continue
            name = LABELS[body] + ("" if server == "fast path" else " (ceiling)")
            ax.plot([r["rps"] for r in rs], [r["p99_ms"] for r in rs], style, color=color,
                    label=name)
            if server == "fast path":
                for r in rs:
                    ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p99_ms"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s, 1 image each)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"CIFAR-2 service vs like-for-like ceiling (decode only), wrk\n{machine()}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
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
