"""ONNX Runtime sessions with an explicit provider list, reporting the provider that really runs.

Imports only onnxruntime and numpy (never torch), so the service can use it too:

    from export.runtime import open_session, run_session
    sess, provider = open_session("artifacts/net/model.onnx", device="auto")

onnxruntime-gpu silently falls back to the CPU when CUDA cannot be loaded, so the provider a
caller asked for is not evidence; ``session.get_providers()[0]`` after creation is.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


class RuntimeUnavailable(RuntimeError):
    """The requested execution provider is not what ONNX Runtime actually gave us."""


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads at all. onnxruntime-gpu always *lists* CUDA, and
    asking for it on a machine without a driver logs a loud error before falling back."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def cuda_library_names() -> list[str]:
    """The CUDA and cuDNN libraries this onnxruntime-gpu build links against (Linux names), in
    load order: cuBLAS needs cuBLASLt first."""
    major = str(getattr(ort, "cuda_version", "") or "12").split(".")[0]
    cufft = "12" if int(major) >= 13 else "11"  # CUDA 13 ships cuFFT 12, CUDA 12 cuFFT 11
    return [f"libcublasLt.so.{major}", f"libcublas.so.{major}", f"libnvrtc.so.{major}",
            "libcurand.so.10", f"libcufft.so.{cufft}", f"libcudart.so.{major}", "libcudnn.so.9"]


_preloaded: dict[str, str | None] = {}


def preload_cuda_libraries() -> dict[str, str | None]:
    """Load CUDA and cuDNN from NVIDIA's pip packages wherever they are on sys.path; return
    {library: path, or None where no package has it (the system loader then looks)}.

    ORT's CUDA provider finds these libraries only on the loader's path, or when torch was
    imported first and loaded them. The service never imports torch, and its CUDA wheels may sit
    in another site-packages than onnxruntime-gpu (a --target install next to a machine's own
    CUDA packages), where ``onnxruntime.preload_dlls()`` does not look. Once a library is
    loaded, the provider's own dependency on it resolves to the loaded copy."""
    if _preloaded or sys.platform != "linux":
        return _preloaded
    libs = [d for entry in sys.path if entry and Path(entry, "nvidia").is_dir()
            for d in sorted(Path(entry, "nvidia").glob("*/lib"))]
    for name in cuda_library_names():
        path = next((d / name for d in libs if (d / name).is_file()), None)
        if path is not None:
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                path = None
        _preloaded[name] = str(path) if path else None
    return _preloaded


def providers_for(device: str, cuda_options: dict | None = None) -> list:
    """The explicit provider list for ``device`` ("cpu", "cuda" or "auto" = CUDA when usable);
    ``cuda_options`` are added to the CUDA provider's options."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu" or CUDA not in ort.get_available_providers() or not cuda_driver_present():
        return [CPU]
    preload_cuda_libraries()
    # TF32 off: CUDA fp32 results must match the fp32 CPU reference, and ORT enables TF32
    # by default on Ampere and newer.
    return [(CUDA, {"use_tf32": "0", **(cuda_options or {})}), CPU]


def open_session(path: str | Path, device: str = "cpu", threads: int = 0,
                 cuda_options: dict | None = None, options: ort.SessionOptions | None = None):
    """Create an InferenceSession; return (session, provider that really runs it).

    ``device="cuda"`` raises RuntimeUnavailable if CUDA is not actually the first provider;
    ``"auto"`` takes CUDA when it works and reports CPU otherwise. ``threads`` = 0 lets ORT choose.
    ``options``: SessionOptions to start from (the service's shared memory arena).
    """
    opts = options or ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts,
                                providers=providers_for(device, cuda_options))
    used = sess.get_providers()[0]
    if device == "cuda" and used != CUDA:
        raise RuntimeUnavailable(
            f"asked for CUDA but ONNX Runtime runs {used} (no usable GPU or CUDA libraries)"
        )
    return sess, used


def run_session(sess, images: np.ndarray, run_options: ort.RunOptions | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Run the serving graph: uint8 [N,3,32,32] -> (logits, probs) float32 [N,2]."""
    logits, probs = sess.run(["logits", "probs"], {"images": np.ascontiguousarray(images)},
                             run_options)
    return logits, probs
