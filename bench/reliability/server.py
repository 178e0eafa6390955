"""The server under test for the reliability scripts: start `bentoml serve`, find its worker
processes, read their memory and open files, and the request mix every script sends.

The models come from the BentoML store (BENTOML_HOME), like bench/bench_http.py: cifar2-net and
cifar2-dense must be registered (`make models`, or `python -m export RUN.pt --register`).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from bench.bench_http import start, stop
from bench.reliability.load import Request

BENTOML = str(Path(sys.executable).with_name("bentoml"))
WORKER_MODULE = "_bentoml_impl.worker.service"
__all__ = ["has_v2", "mix", "npy_bytes", "open_fds", "rss_mb", "serve", "stop", "workers"]


def serve(port: int, log: Path, cpus: str | None = None, **env: str):
    """`bentoml serve` on 127.0.0.1:port with CIFAR2_* overrides, on the CPUs ``cpus`` (taskset
    syntax, e.g. "1"; default: all); returns (process, url) once /readyz is 200 (exits with the
    log's tail if it does not come up)."""
    # No lame-duck delay on stop unless asked (service/drain.py): the scripts stop many servers.
    full = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR2_DRAIN_S": "0", **env}
    url = f"http://127.0.0.1:{port}"
    pin = ["taskset", "-c", cpus] if cpus else []
    proc = start([*pin, BENTOML, "serve", "--port", str(port), "--host", "127.0.0.1"], full,
                 f"{url}/readyz", log)
    return proc, url


def workers(proc) -> list[psutil.Process]:
    """The worker processes the supervisor (circus, inside `bentoml serve`) runs."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return sorted((c for c in children if WORKER_MODULE in " ".join(_cmdline(c))),
                  key=lambda p: p.pid)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def rss_mb(p: psutil.Process) -> float:
    return p.memory_info().rss / 2**20


def open_fds(p: psutil.Process) -> int:
    return p.num_fds()


def has_v2(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/models/convnet", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buf, "PNG")
    return buf.getvalue()


def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "cifar2reliability"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                      else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode() + \
            data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def mix(v2: bool, bad: bool = True, n: int = 1) -> list[tuple[Request, float]]:
    """(request, weight): every inference route, small requests of ``n`` images and bulk ones;
    with ``bad``, the client errors a real API sees (each expects its 4xx). A larger ``n`` makes
    each request dearer, so that 3x the capacity in requests/s is a rate a Python client on the
    same 2 cores can still send."""
    rng = np.random.default_rng(0)
    bulk_n = 64 if n == 1 else min(16 * n, 1024)
    x = rng.integers(0, 256, (bulk_n, 3, 32, 32), dtype=np.uint8)
    n_png = 4 if n == 1 else 8
    pngs = [_png(img) for img in x[:n_png]]
    npy = "application/x-npy"
    classify, ctype = _multipart([("images", f"{i}.png", p) for i, p in enumerate(pngs)])
    compare, _ = _multipart([("images", f"{i}.png", p) for i, p in enumerate(pngs[:n_png // 2])])
    dense, _ = _multipart([("images", "0.png", pngs[0]), ("model", None, b"dense")])
    out = [
        (Request.post(f"predict .npy x{n}", "/predict", npy_bytes(x[:n]), npy), 30),
        (Request.post(f"predict .npy x{bulk_n}", "/predict", npy_bytes(x), npy), 5),
        (Request.post(f"predict JSON x{n}", "/predict",
                      b'{"images": ' + str(x[:n].tolist()).encode() + b"}",
                      "application/json"), 10),
        (Request.post(f"classify PNG x{n_png}", "/classify", classify, ctype), 10),
        (Request.post("classify dense PNG x1", "/classify", dense, ctype), 5),
        (Request.post(f"compare PNG x{n_png // 2}", "/compare", compare, ctype), 5),
    ]
    if v2:
        header = ('{"inputs": [{"name": "images", "datatype": "UINT8", "shape": '
                  f'[{n}, 3, 32, 32], "parameters": {{"binary_data_size": {n * 3072}}}}}]}}'
                  ).encode()
        out += [
            (Request.post(f"v2 binary x{n}", "/v2/models/convnet/infer",
                          header + x[:n].tobytes(), "application/octet-stream",
                          headers={"Inference-Header-Content-Length": len(header)}), 10),
            (Request.post(f"v2 JSON x{n}", "/v2/models/dense/infer", (
                '{"inputs": [{"name": "images", "datatype": "UINT8", "shape": '
                f'[{n}, 3, 32, 32], "data": {x[:n].ravel().tolist()}}}]}}').encode(),
                "application/json"), 5),
        ]
    if bad:
        out += [
            (Request.post("bad: not .npy", "/predict", b"not numpy", npy, (400,)), 2),
            (Request.post("bad: float32 .npy", "/predict", npy_bytes(x[:1].astype(np.float32)), npy,
                          (400,)), 1),
            (Request.post("bad: unknown model", "/classify", _multipart(
                [("images", "0.png", pngs[0]), ("model", None, b"resnet")])[0], ctype,
                (400,)), 1),
            (Request.post("bad: broken PNG", "/classify", _multipart(
                [("images", "0.png", b"\x89PNG broken")])[0], ctype, (400,)), 1),
            (Request.post("bad: too many images", "/predict",
                          npy_bytes(np.zeros((2000, 3, 32, 32), np.uint8)), npy, (400, 413)), 1),
            (Request.get("bad: no such route", "/nope", (404,)), 1),
        ]
    return out
