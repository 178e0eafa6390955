"""The few CUDA runtime calls the GPU check needs, through ctypes on the libcudart that ONNX
Runtime itself loaded (export.runtime.preload_cuda_libraries): versions, pinned host memory,
device memory, synchronous copies. No CuPy or torch: the check must run with neither.

    rt = CudaRuntime.load()          # raises CudaError when libcudart is not there
    rt.runtime_version()             # "13.0"; works without a GPU
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from export.runtime import cuda_library_names, preload_cuda_libraries

H2D, D2H = 1, 2  # cudaMemcpyKind
SM_COUNT_ATTR = 16  # cudaDevAttrMultiProcessorCount


class CudaError(RuntimeError):
    pass


def version_string(v: int) -> str:
    """CUDA's 1000*major + 10*minor encoding -> "major.minor"."""
    return f"{v // 1000}.{(v % 1000) // 10}"


class CudaRuntime:
    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        vp, sz = ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t
        for name, args in {
            "cudaRuntimeGetVersion": [ctypes.POINTER(ctypes.c_int)],
            "cudaDriverGetVersion": [ctypes.POINTER(ctypes.c_int)],
            "cudaHostAlloc": [vp, sz, ctypes.c_uint], "cudaFreeHost": [ctypes.c_void_p],
            "cudaMalloc": [vp, sz], "cudaFree": [ctypes.c_void_p],
            "cudaMemcpy": [ctypes.c_void_p, ctypes.c_void_p, sz, ctypes.c_int],
            "cudaDeviceSynchronize": [],
            "cudaDeviceGetAttribute": [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int],
        }.items():
            getattr(self.lib, name).argtypes = args
            getattr(self.lib, name).restype = ctypes.c_int
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.lib.cudaGetErrorString.argtypes = [ctypes.c_int]

    @classmethod
    def load(cls) -> CudaRuntime:
        name = next(n for n in cuda_library_names() if n.startswith("libcudart"))
        path = preload_cuda_libraries().get(name) or name  # else the system loader's copy
        try:
            return cls(path)
        except OSError as e:
            raise CudaError(f"{name} not loadable ({e})") from None

    def _check(self, rc: int, what: str) -> None:
        if rc:
            raise CudaError(f"{what}: {self.lib.cudaGetErrorString(rc).decode()} (error {rc})")

    def _int(self, fn, *args) -> int:
        out = ctypes.c_int()
        self._check(getattr(self.lib, fn)(ctypes.byref(out), *args), fn)
        return out.value

    def runtime_version(self) -> str:
        return version_string(self._int("cudaRuntimeGetVersion"))

    def driver_version(self) -> str | None:
        """The CUDA version the driver supports; None without a driver."""
        v = self._int("cudaDriverGetVersion")
        return version_string(v) if v else None

    def sm_count(self, device: int = 0) -> int:
        return self._int("cudaDeviceGetAttribute", SM_COUNT_ATTR, device)

    def host_alloc(self, nbytes: int) -> int:
        """Page-locked ("pinned") host memory: the copy engine reads it at full PCIe speed."""
        p = ctypes.c_void_p()
        self._check(self.lib.cudaHostAlloc(ctypes.byref(p), nbytes, 0), "cudaHostAlloc")
        return p.value

    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(p), nbytes), "cudaMalloc")
        return p.value

    def free_host(self, ptr: int) -> None:
        self._check(self.lib.cudaFreeHost(ptr), "cudaFreeHost")

    def free(self, ptr: int) -> None:
        self._check(self.lib.cudaFree(ptr), "cudaFree")

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        """Synchronous: returns when the bytes have arrived."""
        self._check(self.lib.cudaMemcpy(dst, src, nbytes, kind), "cudaMemcpy")

    def synchronize(self) -> None:
        self._check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")


def host_array(ptr: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A numpy view of host memory at ``ptr`` (pinned memory from host_alloc)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype).reshape(shape)


def cudnn_version() -> tuple[str | None, str | None]:
    """(cuDNN version, library path) of the libcudnn ORT loads; (None, None) when absent."""
    path = preload_cuda_libraries().get("libcudnn.so.9") or "libcudnn.so.9"
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None, None
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    v = lib.cudnnGetVersion()  # 9.x: 10000*major + 100*minor + patch
    return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}", str(path)


def loaded_libraries() -> dict[str, str]:
    """The CUDA/cuDNN/TensorRT libraries mapped into this process right now (after a CUDA
    session ran): what ORT really loaded, not what a package list says."""
    keys = ("libcudart", "libcublas", "libcudnn", "libcufft", "libcurand", "libnvinfer",
            "libcuda.so", "libonnxruntime_providers")
    found = {}
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if "/" in line else ""
            name = Path(path).name
            if any(name.startswith(k) for k in keys):
                found.setdefault(name, path)
    except OSError:
        pass
    return dict(sorted(found.items()))
