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


def providers_for(device: str, cuda_options: dict | None = None) -> list:
    """The explicit provider list for ``device`` ("cpu", "cuda" or "auto" = CUDA when usable);
    ``cuda_options`` are added to the CUDA provider's options."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu" or CUDA not in ort.get_available_providers() or not cuda_driver_present():
        return [CPU]
    # TF32 off: CUDA fp32 results must match the fp32 CPU reference, and ORT enables TF32
    # by default on Ampere and newer.
    return [(CUDA, {"use_tf32": "0", **(cuda_options or {})}), CPU]


def open_session(path: str | Path, device: str = "cpu", threads: int = 0,
                 cuda_options: dict | None = None):
    """Create an InferenceSession; return (session, provider that really runs it).

    ``device="cuda"`` raises RuntimeUnavailable if CUDA is not actually the first provider;
    ``"auto"`` takes CUDA when it works and reports CPU otherwise. ``threads`` = 0 lets ORT choose.
    """
    opts = ort.SessionOptions()
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


def run_session(sess, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the serving graph: uint8 [N,3,32,32] -> (logits, probs) float32 [N,2]."""
    logits, probs = sess.run(["logits", "probs"], {"images": np.ascontiguousarray(images)})
    return logits, probs
