"""What the machine is: GPU, driver, the CUDA/cuDNN that ONNX Runtime really loads, providers,
PCIe link and copy bandwidth, and the arithmetic peaks the throughput is set against.

The peaks are derived, not measured: SM count x max SM clock (what the driver reports) x the
architecture's per-SM rate from NVIDIA's whitepapers (dense, no sparsity). The copy bandwidth is
measured (pinned host memory, 256 MiB, synchronous cudaMemcpy).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time

import onnxruntime as ort

from bench.gpu.cudart import D2H, H2D, CudaError, CudaRuntime, cudnn_version

NO_GPU = "not measured: no GPU"
# compute capability -> (FP32 FLOPs per SM per clock, dense FP16 tensor-core FLOPs per SM per clock)
# (data-centre parts: V100, T4, A100, A10/A40, L4/L40S, H100/H200).
PER_SM = {(7, 0): (128, 1024), (7, 5): (128, 1024), (8, 0): (128, 2048), (8, 6): (256, 1024),
          (8, 9): (256, 1024), (9, 0): (256, 4096)}
PCIE_GTS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}  # GT/s per lane


def pcie_gbs(gen: int, width: int) -> float:
    """Theoretical bytes/s per direction (8b/10b coding to gen 2, 128b/130b from gen 3)."""
    coding = 0.8 if gen <= 2 else 128 / 130
    return PCIE_GTS.get(gen, 0.0) * 1e9 * width * coding / 8


def nvml_info() -> dict:
    """GPU 0 through NVML (nvidia-ml-py, a BentoML dependency); {"error": ...} without a driver."""
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver, no library: the report says so
        return {"error": f"NVML unavailable ({type(e).__name__}: {e})"}
    try:
        h = nv.nvmlDeviceGetHandleByIndex(0)
        info = {"name": nv.nvmlDeviceGetName(h), "driver": nv.nvmlSystemGetDriverVersion(),
                "gpus": nv.nvmlDeviceGetCount(),
                "memory_gib": nv.nvmlDeviceGetMemoryInfo(h).total / 2**30,
                "compute_capability": list(nv.nvmlDeviceGetCudaComputeCapability(h)),
                "max_sm_clock_mhz": nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM),
                "pcie_gen": nv.nvmlDeviceGetMaxPcieLinkGeneration(h),
                "pcie_width": nv.nvmlDeviceGetMaxPcieLinkWidth(h),
                "pcie_gen_now": nv.nvmlDeviceGetCurrPcieLinkGeneration(h),
                "pcie_width_now": nv.nvmlDeviceGetCurrPcieLinkWidth(h)}
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
    except Exception as e:  # noqa: BLE001
        return {"error": f"NVML query failed ({type(e).__name__}: {e})"}
    finally:
        nv.nvmlShutdown()


def copy_bandwidth(rt: CudaRuntime, nbytes: int = 256 * 2**20, reps: int = 5) -> dict:
    """Measured pinned host <-> device bytes/s, best of ``reps`` synchronous copies."""
    host, dev = rt.host_alloc(nbytes), rt.malloc(nbytes)
    try:
        out = {}
        for name, kind, dst, src in (("h2d", H2D, dev, host), ("d2h", D2H, host, dev)):
            rt.copy(dst, src, nbytes, kind)
            best = min(_timed(rt.copy, dst, src, nbytes, kind) for _ in range(reps))
            out[f"{name}_bytes_per_s"] = nbytes / best
        return out
    finally:
        rt.free_host(host)
        rt.free(dev)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def short_path(path: str | None) -> str | None:
    """A library path as the report shows it, with no machine's folders: relative to the import
    folder it came from (site-packages, or the --target folder that bench/gpu/install.py fills,
    which has no "site-packages" in its name); system paths stay as they are."""
    if not path:
        return path
    for root in sorted({os.path.join(os.path.abspath(p), "") for p in sys.path if p}, key=len,
                       reverse=True):
        if path.startswith(root):
            return path[len(root):]
    return path.split("site-packages/", 1)[-1]


def cuda_packages() -> dict[str, dict]:
    """The CUDA/cuDNN pip packages onnxruntime-gpu asks for (its [cuda,cudnn] extras), each with
    the version installed here and whether it fits: what the machine's own copies must match."""
    from packaging.requirements import Requirement

    out = {}
    for line in importlib.metadata.requires("onnxruntime-gpu") or []:
        req = Requirement(line)
        if not req.marker or not any(req.marker.evaluate({"extra": e}) for e in ("cuda", "cudnn")):
            continue
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        out[req.name] = {"wants": str(req.specifier), "installed": have,
                         "fits": have is not None and req.specifier.contains(have)}
    return out


def describe(device: str) -> dict:
    """The machine section of the report; GPU fields say NO_GPU on a CPU run."""
    cudnn, cudnn_path = cudnn_version()
    m = {"device": device, "host": platform.node(), "cpu_cores": os.cpu_count(),
         "python": platform.python_version(), "onnxruntime": ort.__version__,
         "onnxruntime_package": getattr(ort, "package_name", "onnxruntime"),
         "onnxruntime_built_for_cuda": getattr(ort, "cuda_version", None) or None,
         "providers_available": ort.get_available_providers(),
         "cudnn": cudnn, "cudnn_path": short_path(cudnn_path)}
    try:
        m["cuda_packages"] = cuda_packages()
    except importlib.metadata.PackageNotFoundError:
        m["cuda_packages"] = {}  # the CPU build of onnxruntime
    try:
        rt = CudaRuntime.load()
        m.update(cuda_runtime=rt.runtime_version(), cuda_runtime_path=short_path(rt.path),
                 cuda_driver=rt.driver_version())
    except CudaError as e:
        rt, m["cuda_runtime"] = None, f"not loadable: {e}"
    if device != "cuda":
        m.update(gpu=NO_GPU, driver=NO_GPU, pcie=NO_GPU, copy=NO_GPU, peak=NO_GPU)
        return m
    m["gpu"] = nvml_info()
    g = m["gpu"]
    if "pcie_gen" in g:
        m["pcie"] = {"gen": g["pcie_gen"], "width": g["pcie_width"],
                     "bytes_per_s": pcie_gbs(g["pcie_gen"], g["pcie_width"])}
    try:
        m["copy"] = copy_bandwidth(rt) if rt else {"error": "no CUDA runtime"}
        m["sm_count"] = rt.sm_count()
    except CudaError as e:
        m["copy"] = {"error": str(e)}
    cc = tuple(g.get("compute_capability", ()))
    if cc in PER_SM and m.get("sm_count") and g.get("max_sm_clock_mhz"):
        hz = g["max_sm_clock_mhz"] * 1e6
        fp32, fp16 = PER_SM[cc]
        m["peak"] = {"fp32_flops": m["sm_count"] * hz * fp32, "fp16_flops": m["sm_count"] * hz
                     * fp16, "how": f"{m['sm_count']} SMs x {g['max_sm_clock_mhz']} MHz x "
                     f"{fp32} FP32 / {fp16} FP16-tensor FLOPs per SM per clock (cc {cc[0]}.{cc[1]})"}
    else:
        m["peak"] = {"error": f"per-SM rates not known for compute capability {cc}"}
    return m
