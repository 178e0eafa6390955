"""Worker memory that stays flat under varying batch sizes: one ONNX Runtime CPU arena shared by
the sessions, which hands back what a burst of big batches took once those batches are done.

    from service.memory import RUN_OPTIONS, share_cpu_arena
    share_cpu_arena(opts)            # on the SessionOptions, before creating the session
    session.run(names, feeds, RUN_OPTIONS)

Why: with ONNX Runtime's defaults each session has its own CPU arena that grows by powers of two
and never gives memory back, so every new high-water mark of concurrent batches (a queue
build-up sends 1,024-image batches, two at a time per model) became a permanent step in a
worker's RSS: +26% and +33% after warm-up in the 10-minute soak
(`python -m bench.reliability.soak`), with 314 MiB of arena regions mapped after 2.5 minutes.
Here:

- one arena for both models (``session.use_env_allocators``), whose first region of
  ``KEEP_BYTES`` is kept for good: it holds the largest batches the batchers run at once, so
  ordinary traffic and bulk requests never map or fault in new memory (with a small kept
  region, every 1,024-image batch mapped its own and page faults made it much slower);
- a region added beyond it (``GROW_BYTES`` or more) is freed at the end of the first run that
  finds it unused (``memory.enable_memory_arena_shrinkage``). It is larger than the kept region
  on purpose: the arena places a tensor in the smallest free block that fits, and while an added
  region was the smaller one, every small batch's outputs (still held when its run ends) landed
  there and kept it alive;
- glibc serves blocks from ``MMAP_THRESHOLD`` up with mmap, at a fixed threshold (by default
  it moves the threshold to the size of each mmapped block freed), and keeps up to
  ``TRIM_THRESHOLD`` of freed memory at the top of its heap instead of 128 KiB. A bulk
  request's body (1,024 images are a 3 MiB join of its pieces, 4,096 images 12 MiB) was given
  back to the kernel as soon as it was freed, so the next one faulted in its pages again, and
  the copies around it as many more: ~1,500 page faults per 1,024-image request, ~10% of a
  worker's time under bulk load, and ~4,700 per 4,096-image one (`perf stat -e page-faults`
  on the workers). The threshold is above the largest body (CIFAR2_MAX_BODY_MB, 16), and the
  periodic trim below gives that memory back.
- every ``TRIM_EVERY_S`` a thread calls glibc's malloc_trim: the main heap still kept the
  freed middle parts of request buffers (its [heap] mapping grew 32 -> 58 MiB in 3.5 minutes at
  70% load, and malloc_trim took it back to 32), which the soak counted as growth.

ServedModel.warmup (service/runtime.py) runs four of the largest batches at once, so the part of
the kept region that the service touches under load is in its RSS from the start.

Measured with `python -m bench.reliability.memory` (RSS through a batch-size sequence on three
threads, and images/s per batch size, ORT's defaults against these sessions).
"""

from __future__ import annotations

import ctypes
import platform
import threading
import time

import onnxruntime as ort

MiB = 1 << 20
# Sized for four 1,024-image convnet batches at once (two per model's batcher, see
# ServedModel.warmup): a kept region that held only one made every concurrent big batch map,
# fault in and free a region of its own, and bulk /predict 26% slower
# (`python -m bench.ab_http before:@OLD after: --body npy1024 --concurrency 4`: 68 -> 50 req/s).
# Only the pages batches touch count in RSS: with the default CIFAR2_CPU_CHUNK the largest ORT
# call on the CPU is 64 images, and a worker touches a small part of it.
KEEP_BYTES = 512 * MiB
GROW_BYTES = 256 * MiB
MMAP_THRESHOLD = 32 * MiB
TRIM_THRESHOLD = 64 * MiB
TRIM_EVERY_S = 10.0
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

# After each run, free the CPU arena's added regions that no running batch uses.
RUN_OPTIONS = ort.RunOptions()
RUN_OPTIONS.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

_registered = False


def share_cpu_arena(opts: ort.SessionOptions) -> None:
    """Make a session allocate from the process's shared CPU arena (created on first use)."""
    global _registered
    if not _registered:
        libc = glibc()
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            threading.Thread(target=_trim_forever, args=(libc,), name="malloc-trim",
                             daemon=True).start()
        cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(cpu, ort.OrtArenaCfg({
            "max_mem": 0,  # no cap: a batch must never fail for want of arena
            "arena_extend_strategy": 0,  # kNextPowerOfTwo: only the first region is never freed
            "initial_chunk_size_bytes": KEEP_BYTES,
            "initial_growth_chunk_size_bytes": GROW_BYTES}))
        _registered = True
    opts.add_session_config_entry("session.use_env_allocators", "1")


def glibc():
    """The C library where it is glibc (mallopt and malloc_trim are glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _trim_forever(libc) -> None:
    # ctypes releases the GIL for the call: requests go on while glibc trims.
    while True:
        time.sleep(TRIM_EVERY_S)
        libc.malloc_trim(0)
