"""Every knob of the service, read once from the environment (defaults are the tuned values).

Change any of them without touching code, e.g.
    CIFAR2_MAX_BATCH_SIZE=64 CIFAR2_WORKERS=1 bentoml serve
"""

from __future__ import annotations

import os
from importlib import metadata


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer; unset it or give a number") from None
    if value < 0:
        raise SystemExit(f"{name}={raw!r} must be >= 0")
    return value


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise SystemExit(f"{name}={raw!r}: use on or off")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise SystemExit(f"{name}={raw!r}: use one of {', '.join(choices)}")
    return raw


CONVNET_TAG = os.environ.get("CIFAR2_CONVNET", "cifar2-net:latest")
DENSE_TAG = os.environ.get("CIFAR2_DENSE", "cifar2-dense:latest")
DEVICE = os.environ.get("CIFAR2_DEVICE", "auto").strip().lower()

# Two workers on two cores with one ORT thread each beat one worker with two threads: the
# per-request Python work (HTTP parsing, validation) is the bottleneck, not the tiny model.
WORKERS = _int("CIFAR2_WORKERS", 2)
ORT_THREADS = _int("CIFAR2_ORT_THREADS", 1)

# Batching of every inference request (service/batcher.py). "off" serves every request with
# its own ORT call, for comparison.
BATCHING = _flag("CIFAR2_BATCHING", True)
# /predict, /classify and /compare answered by the request layer (service/routes.py) in front
# of BentoML's IO layer and middlewares; off = BentoML's path, for comparison. V2 is always on.
FAST_PATH = _flag("CIFAR2_FAST_PATH", True)
MAX_BATCH_SIZE = _int("CIFAR2_MAX_BATCH_SIZE", 1024)
# Pad each batch up to the next power of two (service/runtime.py padding_buckets): auto = on
# CUDA only, where every new batch shape costs a cuDNN plan search; on; off.
PAD_BATCHES = _choice("CIFAR2_PAD_BATCHES", "auto", ("auto", "on", "off"))
# One ORT session per padding bucket, so that each session only ever sees one batch shape:
# auto = on CUDA, where ORT's convolution re-plans whenever the shape differs from its previous
# call (~3 ms a call on an H100; service/runtime.py ServedModel); on; off = one session.
SESSION_PER_SHAPE = _choice("CIFAR2_SESSION_PER_SHAPE", "auto", ("auto", "on", "off"))
# On the CPU provider, a batch of more images runs as consecutive ORT calls of this many: the
# convnet's activations then stay in the CPU caches (two threads in-process: ~89k images/s in
# calls of 64 against ~78k in one call of 1,024, bench/bench_http.py). 0 = one call per batch.
CPU_CHUNK = _int("CIFAR2_CPU_CHUNK", 64)
# Batches of up to this many images run on the event loop itself, bigger ones in a thread
# (service/batcher.py); 0 = every model call in a thread.
INLINE_MAX = _int("CIFAR2_INLINE_MAX", 32)
# Cores a batch bigger than CIFAR2_INLINE_MAX may use on the CPU provider: 1/CIFAR2_WORKERS of
# them while any other worker has requests in progress, all of them, as more lanes of ORT calls,
# while every other worker is idle: a client's connections can all land on one worker, which
# then borrows the idle cores (service/neighbours.py, service/runtime.py bulk_threads).
# 0 (default) = the CPUs the process may use; 1 = one thread, never borrow.
BULK_THREADS = _int("CIFAR2_BULK_THREADS", 0)
# Model calls in flight at once per worker and model (natural batching, service/batcher.py).
BATCH_CONCURRENCY = _int("CIFAR2_BATCH_CONCURRENCY", 2)
# A request (BentoML's traffic timeout) or a model call (service.batcher) running longer gets 504.
REQUEST_TIMEOUT_S = _int("CIFAR2_REQUEST_TIMEOUT_S", 60) or 60

MAX_BODY_BYTES = _int("CIFAR2_MAX_BODY_MB", 16) * 1024 * 1024
# Seconds from a request body's first bytes to its last, on every path (service/bodies.py); a
# slower body gets 408 and its connection closed (16 MiB in 30 s is ~0.5 MB/s).
BODY_TIMEOUT_S = _int("CIFAR2_BODY_TIMEOUT_S", 30) or 30
MAX_IMAGES = _int("CIFAR2_MAX_IMAGES", 1024)
# Requests in progress per worker (bodies in, not yet answered) before new ones get 503 +
# Retry-After instead of queueing: the cap on the burst a worker takes on before its sojourn
# (service/sojourn.py) shows it is behind. 64 x a 16-image request is ~100 ms of work on a core.
MAX_IN_FLIGHT = _int("CIFAR2_MAX_IN_FLIGHT", 64)
# The latency budget. Admission by expected queueing delay (service/batcher.py): a request that
# would wait longer than this for its model call gets 503 + Retry-After, unless the model is
# idle; and a worker whose requests all wait longer than this from their last body byte to
# their reply turns new ones away before reading them (service/sojourn.py). 0 = off.
MAX_QUEUE_MS = _int("CIFAR2_MAX_QUEUE_MS", 500)
# Declared pixels (width x height) above which an upload is a decompression bomb.
MAX_IMAGE_PIXELS = _int("CIFAR2_MAX_IMAGE_PIXELS", 4096 * 4096)
ACCESS_LOG = _flag("CIFAR2_ACCESS_LOG", False)
TRACING = _flag("CIFAR2_TRACING", False)

WARMUP_BATCH_SIZES = (1, 8, 64, 256, 1024)
# Allocations between young-generation garbage collections (Python's default is 700).
GC_THRESHOLD = _int("CIFAR2_GC_THRESHOLD", 50_000) or 700

# The server version of V2's GET /v2: the project's, when it is installed as a package.
try:
    VERSION = metadata.version("cifar2-serving")
except metadata.PackageNotFoundError:  # a Bento carries the code, not the package
    VERSION = "bento"
