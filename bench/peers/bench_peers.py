"""Peers side by side: ours, LitServe and Ray Serve serving the same model.onnx, same wrk load.

    make peers-venv                         # once: LitServe + Ray Serve in .venv-peers
    python -m bench.peers.bench_peers       # the full run, ~15 min: table + docs/peers.{json,png}
    python -m bench.peers.bench_peers --duration 2 --repeat 1         # a quick smoke run
    python -m bench.peers.bench_peers --servers ours litserve --litserve 2x1
    python -m bench.peers.bench_peers --replot         # redraw docs/peers.png from its JSON

(`make bench-peers` runs the full one.) Each round starts every server in turn on the same
machine: ours (`bentoml serve` from the repository root, default settings: 2 workers), LitServe
at each --litserve shape (API servers x inference workers, on its ZeroMQ queue) and Ray Serve
at each --ray replica count. The peers batch as documented (LitServe's max_batch_size and
batch_timeout, Ray's @serve.batch), up to 32 requests or 5 ms, on ONNX Runtime CPU with one
intra-op thread per worker, as ours. Each server gets one check (its answers must equal ours),
a short warm-up, then wrk at --concurrency with two bodies: one image as JSON to /predict
({"images": [[[[...]]]]}), and 64 JPEGs (32x32) in one multipart request to /classify. Every
cell is the median over --repeat rounds; the table shows each peer at its best shape, and
"ours / this" is our req/s over that server's. Numbers worth reporting come from a quiet
machine: all servers share its cores with wrk.

Needs wrk (`apt-get install wrk`), the peers' venv (`make peers-venv`), and cifar2-net /
cifar2-dense in the model store (`make models`), or --model PATH for the peers' model.onnx.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.bench_http import LUA, ROOT, machine, start, stop, wrk

BOUNDARY = "cifar2peersboundary"
PEERS_VENV = ROOT / ".venv-peers"
LOADS = {"json1": "/predict, 1 image (JSON)", "jpeg64": "/classify, 64 JPEGs (multipart)"}
TOLERANCE = 1e-5  # ours and a peer run the same file on the same runtime: answers must agree


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def bodies(tmp: Path) -> dict[str, tuple[Path, str, int]]:
    """load -> (body file, content type, images per request), in bench_http.wrk's form."""
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    parts = []
    for i in range(64):
        # Smooth, photo-like 32x32 images (noise upsampled), so the JPEGs are of usual size.
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        jpeg = io.BytesIO()
        small.resize((32, 32), Image.Resampling.BICUBIC).save(jpeg, "JPEG", quality=90)
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; "
                     f"filename=\"{i}.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
                     + jpeg.getvalue() + b"\r\n")
    out = {}
    for name, data, ctype, n in [
        ("json1", json.dumps({"images": one.tolist()}).encode(), "application/json", 1),
        ("jpeg64", b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(),
         f"multipart/form-data; boundary={BOUNDARY}", 64),
    ]:
        path = tmp / name
        path.write_bytes(data)
        out[name] = (path, ctype, n)
    return out


def route(load: str) -> str:
    return "/predict" if load == "json1" else "/classify"


def plural(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if int(n) == 1 else "s")


def servers(args, model: str, peers_python: str, env: dict) -> list[dict]:
    """Every server to measure: name, shape, command, environment, readiness URL path."""
    ours_env = {**env, "BENTOML_DO_NOT_TRACK": "True"}
    if args.tag:
        ours_env["CIFAR2_CONVNET"] = args.tag
    peer_env = {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                "RAY_USAGE_STATS_ENABLED": "0"}
    batching = ["--max-batch-size", str(args.max_batch_size)]
    out = []
    if "ours" in args.servers:
        out.append({"server": "ours", "shape": "bentoml serve, defaults (2 workers)",
                    "cmd": [str(Path(sys.executable).with_name("bentoml")), "serve", "--host",
                            "127.0.0.1"], "env": ours_env, "ready": "/readyz"})
    if "litserve" in args.servers:
        for shape in args.litserve:
            api, workers = shape.split("x")
            out.append({"server": "LitServe",
                        "shape": f"{plural(api, 'API server')} x {plural(workers, 'worker')}",
                        "cmd": [peers_python, "-m", "bench.peers.litserve_app", model,
                                "--api-servers", api, "--workers", workers, *batching,
                                "--batch-timeout", str(args.batch_timeout),
                                *(["--fast-queue"] if args.litserve_queue == "zmq" else [])],
                        "env": peer_env, "ready": "/health"})
    if "ray" in args.servers:
        for replicas in args.ray:
            out.append({"server": "Ray Serve", "shape": plural(replicas, "replica"),
                        "cmd": [peers_python, "-m", "bench.peers.ray_app", model, "--replicas",
                                str(replicas), *batching, "--batch-wait-timeout",
                                str(args.batch_timeout)],
                        "env": peer_env, "ready": "/health"})
    return out


def answers(url: str, data: dict) -> dict[str, np.ndarray]:
    """Each load's probabilities from one real request; exits if the reply has the wrong form."""
    out = {}
    for load, (path, ctype, n) in data.items():
        r = httpx.post(url + route(load), content=path.read_bytes(),
                       headers={"content-type": ctype}, timeout=60)
        try:
            body = r.json()
            if load == "json1":
                probs = np.asarray(body, dtype=np.float64)
            else:
                probs = np.asarray([list(p["probabilities"].values())
                                    for p in body["predictions"]], dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            probs = None
        if r.status_code != 200 or probs is None or probs.shape != (n, 2):
            sys.exit(f"{url}{route(load)} answered {r.status_code}: {r.text[:300]}")
        out[load] = probs
    return out


def check(name: str, got: dict, want: dict | None) -> None:
    if want is None:
        return
    for load, probs in got.items():
        diff = float(np.abs(probs - want[load]).max())
        if diff > TOLERANCE:
            sys.exit(f"{name} answers {route(load)} differently from ours (max |diff| {diff:.2g}"
                     "): does --model name the file our service loads from the store?")


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process under pid, read from /proc (Linux)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def stop_all(proc: subprocess.Popen) -> None:
    """Stop a server and every process it started: LitServe and Ray leave some behind when
    their parent is gone, and they would steal CPU from the next server."""
    family = descendants(proc.pid)
    stop(proc)
    for pid, started in family:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:
                os.kill(pid, signal.SIGKILL)  # still the same process, not a reused pid
        except (OSError, IndexError):
            pass


def summarize(spec: dict, load: str, n: int, runs: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "errors")}
    return {"server": spec["server"], "shape": spec["shape"], "load": load,
            "images_per_request": n, **med, "images_per_s": med["rps"] * n, "runs": runs}


def best(results: list[dict]) -> list[dict]:
    """Each server at its best shape (the most req/s) for each load. Every row gets its ratio:
    our req/s over its req/s, on the same load."""
    top: dict[tuple[str, str], dict] = {}
    for r in results:
        key = (r["load"], r["server"])
        if key not in top or r["rps"] > top[key]["rps"]:
            top[key] = r
    for r in results:
        ours = top.get((r["load"], "ours"))
        r["ours_over_this"] = ours["rps"] / r["rps"] if ours and r["rps"] else None
    return sorted(top.values(), key=lambda r: (list(LOADS).index(r["load"]),
                                               r["server"] != "ours"))


def table(rows: list[dict], concurrency: int) -> str:
    lines = ["| load | server | shape | req/s | images/s | p50 ms | p99 ms | errors | ours / this |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = r.get("ours_over_this")
        lines.append(f"| {LOADS[r['load']]}, c={concurrency} | {r['server']} | {r['shape']} | "
                     f"{r['rps']:,.0f} | {r['images_per_s']:,.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['errors']:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, concurrency: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "tab:green", "LitServe": "tab:purple", "Ray Serve": "tab:blue"}
    fig, axes = plt.subplots(1, len(LOADS), figsize=(11, 4.5))
    for ax, load in zip(axes, LOADS):
        rs = [r for r in results if r["load"] == load]
        labels = [f"{r['server']}\n{r['shape']}" for r in rs]
        ax.barh(labels, [r["images_per_s"] for r in rs],
                color=[colors.get(r["server"], "grey") for r in rs])
        for i, r in enumerate(rs):
            ax.annotate(f" {r['images_per_s']:,.0f} img/s, p99 {r['p99_ms']:.0f} ms",
                        (r["images_per_s"], i), va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{LOADS[load]}, c={concurrency}", fontsize=9)
        ax.set_xlabel("images/s (median)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(0, 1.75 * max(r["images_per_s"] for r in rs))
    fig.suptitle(f"Same model.onnx, same wrk load: ours vs LitServe vs Ray Serve ({machine()})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def peer_versions(peers_python: str) -> dict:
    code = ("import json, litserve, ray, onnxruntime; print(json.dumps({'litserve': "
            "litserve.__version__, 'ray': ray.__version__, 'onnxruntime': onnxruntime.__version__}))")
    done = subprocess.run([peers_python, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        fail(f"the peers' venv cannot import litserve/ray/onnxruntime ({done.stderr.strip()[-300:]})"
             "; run `make peers-venv`")
    return json.loads(done.stdout)


def model_path(spec: str) -> tuple[str, str | None]:
    """(model.onnx path, store tag or None): --model is a path, or a store tag."""
    if Path(spec).is_file():
        return str(Path(spec).resolve()), None
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(spec).path_of("model.onnx"), spec
    except NotFound:
        fail(f"no model {spec} in the BentoML store; register the models with `make models` "
             "or pass --model PATH/model.onnx")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("CIFAR2_CONVNET", "cifar2-net:latest"),
                   help="store tag (ours serves the same) or a model.onnx path for the peers")
    p.add_argument("--servers", nargs="+", default=["ours", "litserve", "ray"],
                   choices=["ours", "litserve", "ray"])
    p.add_argument("--litserve", nargs="+", default=["1x1", "2x1", "1x2", "2x2"],
                   help="LitServe shapes, API servers x inference workers")
    # LitServe documents its ZeroMQ queue (fast_queue) for "hundreds of requests per second".
    p.add_argument("--litserve-queue", choices=["zmq", "mp"], default="zmq",
                   help="between LitServe's API servers and workers: ZeroMQ or multiprocessing")
    p.add_argument("--ray", nargs="+", type=int, default=[1, 2], help="Ray Serve replica counts")
    p.add_argument("--max-batch-size", type=int, default=32, help="the peers' batch limit")
    p.add_argument("--batch-timeout", type=float, default=0.005,
                   help="seconds the peers wait for a batch to fill")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2, help="seconds of wrk per load, not counted")
    p.add_argument("--repeat", type=int, default=3, help="rounds; every cell is their median")
    p.add_argument("--port", type=int, default=3400, help="first port; one per server")
    p.add_argument("--peers-python", default=str(PEERS_VENV / "bin" / "python"))
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where peers.json/png go")
    p.add_argument("--replot", action="store_true",
                   help="only redraw peers.png from the peers.json in --out")
    args = p.parse_args()
    if args.replot:
        saved = json.loads((args.out / "peers.json").read_text())
        plot(saved["results"], args.out / "peers.png", saved["concurrency"])
        return
    bad = [s for s in args.litserve if not (len(s.split("x")) == 2
                                             and all(x.isdigit() and int(x) > 0
                                                     for x in s.split("x")))]
    if bad:
        fail(f"--litserve {' '.join(bad)}: give shapes as APIxWORKERS, e.g. 2x1")
    if not shutil.which("wrk"):
        fail("wrk is not installed: apt-get install -y wrk")
    peers = [s for s in args.servers if s != "ours"]
    if peers and not Path(args.peers_python).is_file():
        fail(f"no peers' venv at {args.peers_python}: run `make peers-venv` (LitServe and Ray "
             "Serve in their own venv, from bench/peers/requirements.txt)")
    versions = peer_versions(args.peers_python) if peers else {}
    model, args.tag = model_path(args.model)

    tmp = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    data = bodies(tmp)
    plan = servers(args, model, args.peers_python, dict(os.environ))
    runs: dict[tuple[int, str], list[dict]] = {}
    want = None
    bar = tqdm(total=len(plan) * len(data) * args.repeat, desc="wrk runs", unit="run")
    for _ in range(args.repeat):
        for i, spec in enumerate(plan):
            port = args.port + i
            url = f"http://127.0.0.1:{port}"
            bar.set_postfix_str(f"{spec['server']}: {spec['shape']}")
            proc = start([*spec["cmd"], "--port", str(port)], spec["env"], url + spec["ready"],
                         tmp / f"server{i}.log")
            try:
                got = answers(url, data)
                if spec["server"] == "ours":
                    want = want or got
                check(f"{spec['server']} ({spec['shape']})", got, want)
                for load, body in data.items():
                    wrk(url + route(load), body, args.concurrency, args.warmup, lua)
                for load, body in data.items():
                    runs.setdefault((i, load), []).append(
                        wrk(url + route(load), body, args.concurrency, args.duration, lua))
                    bar.update()
            finally:
                stop_all(proc)
    bar.close()

    results = [summarize(plan[i], load, data[load][2], rs) for (i, load), rs in runs.items()]
    results.sort(key=lambda r: list(LOADS).index(r["load"]))
    rows = best(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(
        {"machine": machine(), "concurrency": args.concurrency, "duration_s": args.duration,
         "repeat": args.repeat, "model": args.tag or Path(model).name, "peer_versions": versions,
         "peer_batching": {"max_batch_size": args.max_batch_size,
                           "batch_timeout_s": args.batch_timeout},
         "litserve_queue": args.litserve_queue,
         "best": [{k: v for k, v in r.items() if k != "runs"} for r in rows],
         "results": results}, indent=1))
    print(f"\nEach server at its best shape; median of {args.repeat} run(s) of {args.duration:g} s:")
    print(table(rows, args.concurrency))
    print("\nEvery shape:")
    print(table(results, args.concurrency))
    plot(results, args.out / "peers.png", args.concurrency)
    print(f"\nwrote {args.out / 'peers.json'} and {args.out / 'peers.png'}")


if __name__ == "__main__":
    main()
