"""The HTTP part of the GPU check: the real service (`bentoml serve`) on CIFAR2_DEVICE=cuda,
then the same run on CIFAR2_DEVICE=cpu on the same machine, for the ratio.

Single-image /predict (.npy body) and V2 binary (POST /v2/models/convnet/infer, Triton's binary
tensor extension) at each concurrency, and bulk .npy /predict with N images per request. The
load comes from bench/gpu/loadgen.py (wrk may not exist on the GPU machine, and it cannot send
the V2 header). Each request kind is tried once first: a route the service does not have yet is
reported as skipped, a failing one as failed, and the run goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from bench.gpu import loadgen
from bench.gpu.machine import NO_GPU

ROOT = Path(__file__).resolve().parents[2]
V2_PATH = "/v2/models/convnet/infer"


def npy_request(n: int) -> tuple[str, bytes, list[str]]:
    x = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, x)
    return "/predict", buf.getvalue(), ["Content-Type: application/x-npy"]


def v2_binary_request(n: int) -> tuple[str, bytes, list[str]]:
    """JSON header, then the raw uint8 tensor; the reply's probs asked for as binary too."""
    x = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    header = json.dumps({
        "inputs": [{"name": "images", "shape": list(x.shape), "datatype": "UINT8",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}]}).encode()
    return V2_PATH, header + x.tobytes(), [
        "Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {len(header)}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceFailed(RuntimeError):
    pass


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (arbiter and workers); after the arbiter is gone
    or 20 s, SIGKILL to whatever of the group is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def make_store(bundle: Path, home: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([sys.executable, "-m", "bench.gpu.store", str(bundle)], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise ServiceFailed(f"no model store from {bundle}: {done.stderr[-1500:]}")


def launch(cmd: list[str], env: dict, base: str, log: Path, timeout: float = 180):
    """`bentoml serve` until /readyz is 200. Unlike bench_http.start it gives up as soon as the
    service says why it is not ready (/info's error: a CUDA that does not load), which on a GPU
    lent for minutes matters, and it keeps the log's tail in the reason."""
    # A session of its own, so that stop() can end the workers too, even if the arbiter hangs.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline, why = time.monotonic() + timeout, f"not ready in {timeout:.0f} s"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc
            error = httpx.get(base + "/info", timeout=5).json().get("error")
            if error:
                why = f"not ready: {error}"
                break
        except (httpx.TransportError, ValueError, AttributeError):
            pass
        time.sleep(0.5)
    if proc.poll() is not None:
        why = f"exited with {proc.returncode}"
    stop(proc)
    raise ServiceFailed(f"{why}; log tail: {log.read_text(errors='replace')[-1500:]}")


def plan(concurrency: list[int], bulk: list[int], bulk_concurrency: int) -> list[dict]:
    cells = [{"request": f"{kind} 1 image", "images": 1, "concurrency": c, "make": make}
             for kind, make in (("/predict .npy", npy_request), ("V2 binary", v2_binary_request))
             for c in concurrency]
    cells += [{"request": f"/predict .npy {n} images", "images": n,
               "concurrency": bulk_concurrency, "make": npy_request} for n in bulk]
    return cells


# The service's own view of a cell, from /metrics (summed over the workers): mean per request.
SERVER_SERIES = {"server_ms": "cifar2_request_duration_seconds",
                 "queue_ms": "cifar2_queue_seconds", "model_ms": "cifar2_model_seconds",
                 "images_per_call": "cifar2_batch_size"}
FLUSH_S = 0.2  # requests reach /metrics up to 50 ms later (service/metrics.py)


def server_sums(base: str) -> dict[str, list[float]]:
    """[sum, count] of each SERVER_SERIES histogram over all its labels, from /metrics."""
    sums = {key: [0.0, 0.0] for key in SERVER_SERIES}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        name = line.partition("{" if "{" in line else " ")[0]
        for key, series in SERVER_SERIES.items():
            for i, suffix in enumerate(("_sum", "_count")):
                if name == series + suffix:
                    sums[key][i] += float(line.rsplit(" ", 1)[1])
    return sums


def server_means(before: dict, after: dict) -> dict[str, float | None]:
    """Mean per request between two server_sums: ms for the times, images for the batch."""
    out: dict[str, float | None] = {}
    for key in SERVER_SERIES:
        total, count = (a - b for a, b in zip(after[key], before[key]))
        scale = 1 if key == "images_per_call" else 1000
        out[key] = total / count * scale if count else None
    return out


def serve_and_load(device: str, bundle: Path, served: dict, cells: list[dict], seconds: float,
                   workdir: Path, workers: int | None) -> dict:
    """Start the service on ``device``, run every cell, stop it; the device's results."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BENTOML_HOME": str(workdir / "store"), "BENTOML_DO_NOT_TRACK": "True",
           "CIFAR2_DEVICE": device, "CIFAR2_CONVNET": f"cifar2-{served['convnet']}:latest",
           "CIFAR2_DENSE": f"cifar2-{served['dense']}:latest",
           "CIFAR2_MAX_IMAGES": str(max(c["images"] for c in cells)),
           "CIFAR2_DRAIN_S": "0"}  # no load balancer to drain for: stop at once
    if workers:
        env["CIFAR2_WORKERS"] = str(workers)
    log = workdir / f"serve-{device}.log"
    cmd = [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"]
    try:
        proc = launch(cmd, env, base, log)
    except ServiceFailed as e:
        return {"device": device, "status": f"failed: the service did not become ready: {e}"}
    out: dict = {"device": device, "status": "measured", "cells": []}
    processes = max(1, min(4, (os.cpu_count() or 1) // 4))
    try:
        info = httpx.get(base + "/info", timeout=10).json()
        out["providers"] = {k: m.get("provider") for k, m in info.get("models", {}).items()}
        out["workers"] = env.get("CIFAR2_WORKERS", "default")
        out["batching"] = info.get("batching")
        for cell in tqdm(cells, desc=f"HTTP ({device})", unit="cell"):
            path, body, headers = cell["make"](cell["images"])
            row = {k: v for k, v in cell.items() if k != "make"}
            probe = httpx.post(base + path, content=body, timeout=60, headers=dict(
                h.split(": ", 1) for h in headers))
            if probe.status_code == 404 and path == V2_PATH:
                row["status"] = f"skipped: the service has no V2 route yet (POST {path} -> 404)"
            elif probe.status_code != 200:
                row["status"] = f"failed: {probe.status_code} {probe.text[:200]}"
            else:
                before = server_sums(base)
                r = loadgen.run(base + path, body, headers, cell["concurrency"], seconds,
                                processes)
                time.sleep(FLUSH_S)
                row.update(status="measured", **r, images_per_s=r["ok_rps"] * cell["images"],
                           server=server_means(before, server_sums(base)))
            out["cells"].append(row)
    finally:
        stop(proc)
    out["loadgen_processes"] = processes
    return out


def http_check(bundle: Path, device: str, concurrency: list[int], bulk: list[int],
               bulk_concurrency: int, seconds: float, workers: int | None = None) -> dict:
    spec = json.loads((bundle / "bundle.json").read_text())
    cells = plan(concurrency, bulk, bulk_concurrency)
    with tempfile.TemporaryDirectory(prefix="gpu_check_http_") as tmp:
        make_store(bundle, Path(tmp) / "store")
        runs = {"cuda": {"device": "cuda", "status": NO_GPU}}
        if device == "cuda":
            runs["cuda"] = serve_and_load("cuda", bundle, spec["served"], cells, seconds,
                                          Path(tmp), workers)
        runs["cpu"] = serve_and_load("cpu", bundle, spec["served"], cells, seconds, Path(tmp),
                                     workers)
    ratios = {}
    for cell in runs["cuda"].get("cells", []):
        cpu = next((c for c in runs["cpu"].get("cells", []) if c["request"] == cell["request"]
                    and c["concurrency"] == cell["concurrency"]), None)
        if cpu and cell["status"] == cpu["status"] == "measured" and cpu["images_per_s"]:
            ratios[f"{cell['request']} c={cell['concurrency']}"] = (
                cell["images_per_s"] / cpu["images_per_s"])
    return {"seconds_per_cell": seconds, "runs": runs, "cuda_over_cpu": ratios}
