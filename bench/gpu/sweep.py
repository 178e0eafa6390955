"""In-process throughput of the carried ONNX files on ONNX Runtime, over batch sizes, per mode:

- ``run``: plain ``session.run`` on numpy arrays (ORT copies from pageable memory inside);
- ``iobinding``: pinned host buffers, our own synchronous H2D copy, ``run_with_iobinding`` on
  device buffers, our own D2H copy: each part timed, so images/s comes with its split;
- ``cuda_graph``: as iobinding, on a session with ``enable_cuda_graph``; CUDA graphs need fixed
  shapes, so a batch is padded up to the next bucket and the padded run is what is timed;
- ``tensorrt``: the TensorRT provider (one engine per model and precision, batch profile
  1..max), when its libraries are there; otherwise the rows say skipped and why.

On the CPU (``device="cpu"``) only ``run`` and ``iobinding`` (CPU buffers, no copies) exist;
the CUDA modes are rows marked not measured. Each cell: two warm-up runs (ORT allocates per
shape, cuDNN picks its algorithms), then as many runs as fit in ``seconds`` (at least 3).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from bench.gpu.cudart import D2H, H2D, CudaRuntime, host_array
from bench.gpu.machine import NO_GPU
from export.runtime import open_session, providers_for
from service.runtime import CUDA_OPTIONS, open_serving_session, serving_session_options

TRT = "TensorrtExecutionProvider"
MODES = ("run", "iobinding", "cuda_graph", "tensorrt")
CUDA_ONLY = ("cuda_graph", "tensorrt")
IMAGE_BYTES = 3 * 32 * 32  # uint8 input per image
OUT_BYTES = 2 * 4  # one float32 [2] output (logits or probs) per image
FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}  # as export/formats.py names them

Step = Callable[[int], tuple[float, float, float]]  # batch -> (h2d s, compute s, d2h s)


def measure(step: Step, batch: int, seconds: float, min_iters: int = 3) -> dict:
    step(batch)
    step(batch)
    parts, n, t0 = np.zeros(3), 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        parts += step(batch)
        n += 1
    elapsed = time.perf_counter() - t0
    h2d, compute, d2h = (float(v) for v in parts / n * 1000)
    return {"images_per_s": n * batch / elapsed, "ms_per_batch": elapsed / n * 1000,
            "h2d_ms": h2d, "compute_ms": compute, "d2h_ms": d2h, "iterations": n}


def trt_libraries() -> str | None:
    """Load TensorRT's libnvinfer from pip's tensorrt_libs/nvidia folders or the system;
    return why not when it is not there (None = usable)."""
    if TRT not in ort.get_available_providers():
        return "this onnxruntime build has no TensorRT provider"
    dirs = [Path(p) / sub for p in sys.path if p for sub in ("tensorrt_libs", "tensorrt")]
    for name in ("libnvinfer.so.10", "libnvonnxparser.so.10"):
        path = next((str(d / name) for d in dirs if (d / name).is_file()), name)
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            return f"TensorRT libraries not found ({name}; pip package tensorrt-cu13-libs)"
    return None


class Buffers:
    """Pinned host and device buffers for the largest batch, reused by every cell."""

    def __init__(self, rt: CudaRuntime, max_batch: int, rng: np.random.Generator):
        self.rt = rt
        self.host_in = rt.host_alloc(max_batch * IMAGE_BYTES)
        self.host_out = [rt.host_alloc(max_batch * OUT_BYTES) for _ in range(2)]
        self.dev_in = rt.malloc(max_batch * IMAGE_BYTES)
        self.dev_out = [rt.malloc(max_batch * OUT_BYTES) for _ in range(2)]
        host_array(self.host_in, (max_batch, 3, 32, 32), np.uint8)[:] = rng.integers(
            0, 256, (max_batch, 3, 32, 32), dtype=np.uint8)

    def bind(self, sess, shape_batch: int):
        io = sess.io_binding()
        io.bind_input("images", "cuda", 0, np.uint8, [shape_batch, 3, 32, 32], self.dev_in)
        for name, ptr in zip(("logits", "probs"), self.dev_out):
            io.bind_output(name, "cuda", 0, np.float32, [shape_batch, 2], ptr)
        return io

    def step(self, sess, io) -> Step:
        rt = self.rt

        def run(batch: int) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            rt.copy(self.dev_in, self.host_in, batch * IMAGE_BYTES, H2D)
            t1 = time.perf_counter()
            sess.run_with_iobinding(io)
            rt.synchronize()
            t2 = time.perf_counter()
            for host, dev in zip(self.host_out, self.dev_out):
                rt.copy(host, dev, batch * OUT_BYTES, D2H)
            return t1 - t0, t2 - t1, time.perf_counter() - t2
        return run

    def free(self) -> None:
        for p in [self.host_in, *self.host_out]:
            self.rt.free_host(p)
        for p in [self.dev_in, *self.dev_out]:
            self.rt.free(p)


def plain_step(sess, images: np.ndarray) -> Step:
    def run(batch: int):
        t0 = time.perf_counter()
        sess.run(["logits", "probs"], {"images": images[:batch]})
        return 0.0, time.perf_counter() - t0, 0.0
    return run


def cpu_binding_step(sess, images: np.ndarray) -> Step:
    io = sess.io_binding()

    def run(batch: int):
        io.bind_cpu_input("images", images[:batch])
        io.bind_output("logits")
        io.bind_output("probs")
        t0 = time.perf_counter()
        sess.run_with_iobinding(io)
        return 0.0, time.perf_counter() - t0, 0.0
    return run


def failed(e: Exception) -> str:
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"


def graph_buckets(sizes: list[int], buckets: list[int]) -> tuple[dict[int, list[int]], list[int]]:
    """({bucket: the batch sizes padded up to it}, the sizes above the largest bucket). A CUDA
    graph replays one shape; a batch bigger than every bucket has none to run in, and timing it
    in the largest would count images that were never run."""
    fitted: dict[int, list[int]] = {}
    for b in sizes:
        bucket = next((k for k in sorted(buckets) if k >= b), None)
        if bucket is not None:
            fitted.setdefault(bucket, []).append(b)
    return fitted, [b for b in sizes if b > max(buckets)]


def sweep(bundle: Path, models: list[str], device: str, sizes: list[int], buckets: list[int],
          seconds: float, precisions=("fp32", "fp16")) -> list[dict]:
    rows: list[dict] = []
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(sizes), 3, 32, 32), dtype=np.uint8)
    trt_why = trt_libraries() if device == "cuda" else NO_GPU
    rt = CudaRuntime.load() if device == "cuda" else None
    buffers = Buffers(rt, max(max(sizes), max(buckets)), rng) if rt else None
    cells = len(models) * len(precisions) * len(MODES) * len(sizes)
    bar = tqdm(total=cells, desc=f"sweep ({device})", unit="cell")
    try:
        for model in models:
            for prec in precisions:
                path = bundle / model / FILES[prec]
                key = {"model": model, "precision": prec}
                for mode in MODES:
                    why = (NO_GPU if device != "cuda" and mode in CUDA_ONLY
                           else trt_why if mode == "tensorrt" else None)
                    if why:
                        rows += [{**key, "mode": mode, "batch": b, "status": why} for b in sizes]
                        bar.update(len(sizes))
                        continue
                    try:
                        rows += run_mode(mode, path, device, prec, sizes, buckets, seconds,
                                         images, buffers, key, bar)
                    except Exception as e:  # noqa: BLE001 - one broken mode must not end the run
                        done = {r["batch"] for r in rows if r["mode"] == mode and
                                r["model"] == model and r["precision"] == prec}
                        why = failed(e)
                        rows += [{**key, "mode": mode, "batch": b, "status": why}
                                 for b in sizes if b not in done]
                        bar.update(len(sizes) - len(done))
                    gc.collect()
    finally:
        bar.close()
        if buffers:
            buffers.free()
    return rows


def run_mode(mode, path, device, prec, sizes, buckets, seconds, images, buffers, key, bar):
    rows = []

    def cell(step: Step, batch: int, padded: int | None = None, provider: str = "") -> None:
        row = {**key, "mode": mode, "batch": batch, "padded_to": padded or batch,
               "provider": provider}
        try:
            row.update(status="measured", **measure(step, batch, seconds))
        except Exception as e:  # noqa: BLE001 - one batch size the provider refuses (cuDNN's
            # pooling refused the convnet at 65,536 images on an H100) keeps the others' rows
            row["status"] = failed(e)
        if mode == "run" or device != "cuda":  # no copies of ours to time: ORT's are inside
            row["h2d_ms"] = row["d2h_ms"] = None
        rows.append(row)
        bar.update()

    if mode == "cuda_graph":
        fitted, too_big = graph_buckets(sizes, buckets)
        for bucket, batches in sorted(fitted.items()):
            sess, provider = open_session(path, "cuda", cuda_options={
                **CUDA_OPTIONS, "enable_cuda_graph": "1"}, options=serving_session_options())
            io = buffers.bind(sess, bucket)  # fixed addresses and shape: what a graph replays
            step = buffers.step(sess, io)
            for b in batches:
                cell(step, b, bucket, provider)
            del sess, io
        for b in too_big:
            rows.append({**key, "mode": mode, "batch": b, "padded_to": b, "provider": "",
                         "status": f"skipped: above the largest CUDA-graph bucket, "
                                   f"{max(buckets):,} (--buckets)"})
            bar.update()
        return rows
    if mode == "tensorrt":
        sess, provider = trt_session(path, prec, max(sizes))
    else:
        sess, provider = open_serving_session(path, device, 0)
    if mode == "run":
        step = plain_step(sess, images)
        for b in sizes:
            cell(step, b, provider=provider)
    elif device == "cuda":  # iobinding, tensorrt: device buffers, each batch its own shape
        for b in sizes:
            cell(buffers.step(sess, buffers.bind(sess, b)), b, provider=provider)
    else:
        step = cpu_binding_step(sess, images)
        for b in sizes:
            cell(step, b, provider=provider)
    return rows


def trt_session(path: Path, prec: str, max_batch: int):
    """TensorRT first, CUDA then CPU behind it. One engine per model and precision: a batch
    profile 1..max_batch, so a new batch size does not rebuild it; fp16 = the fp32 graph with
    TensorRT's fp16 kernels allowed (the fp16 ONNX file casts inside, which TRT builds as is)."""
    shape = "images:{}x3x32x32"
    opts = {"trt_fp16_enable": "1" if prec == "fp16" else "0",
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": tempfile.mkdtemp(),
            "trt_profile_min_shapes": shape.format(1),
            "trt_profile_opt_shapes": shape.format(min(4096, max_batch)),
            "trt_profile_max_shapes": shape.format(max_batch)}
    fp32 = path.with_name(FILES["fp32"])
    sess = ort.InferenceSession(str(fp32), providers=[(TRT, opts), *providers_for("cuda")])
    used = sess.get_providers()[0]
    if used != TRT:
        raise RuntimeError(f"asked for TensorRT, ONNX Runtime runs {used}")
    return sess, used

