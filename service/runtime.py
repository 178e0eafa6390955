"""A served model: one ONNX Runtime session over a store model's model.onnx, plus its card.

Sessions use export.runtime's provider selection (the one provider-selection function), with
serving options added: cuDNN's HEURISTIC convolution search, and the shared CPU arena that
gives back what bursts of big batches took (service/memory.py). Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.runtime import CPU, CUDA, RuntimeUnavailable, open_session, run_session
from service import config
from service.memory import RUN_OPTIONS, share_cpu_arena
from service.neighbours import neighbours

# cuDNN's default EXHAUSTIVE search benchmarks every algorithm for every new batch size, and
# adaptive batching makes many batch sizes.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def serving_session_options() -> ort.SessionOptions:
    """The SessionOptions of every served session; bench/gpu/sweep.py measures with them too."""
    opts = ort.SessionOptions()
    # Memory patterns allocate one block per run for all its tensors, sized for each new batch
    # size: two runs at once then fill the kept arena region unevenly (service/memory.py).
    # Without them, as fast here (`python -m bench.reliability.memory`).
    opts.enable_mem_pattern = False
    share_cpu_arena(opts)
    return opts


def open_serving_session(path: str, device: str, threads: int, spin: bool = True):
    """(session, provider that really runs it); device="cuda" without CUDA raises. With
    ``spin=False`` ORT's intra-op threads sleep between operators instead of spinning."""
    options = serving_session_options()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return open_session(path, device, threads, CUDA_OPTIONS, options)
    except RuntimeUnavailable as e:
        raise RuntimeUnavailable(f"CIFAR2_DEVICE=cuda, but {e}; fix the GPU setup or use "
                                 "CIFAR2_DEVICE=auto / cpu") from None


def run_options_for(provider: str) -> ort.RunOptions | None:
    """The run options of a served session: RUN_OPTIONS on the CPU, which give the CPU arena's
    added regions back after each run (service/memory.py). None on CUDA, where the CPU arena
    holds only the small outputs and the shrinkage is not needed (it cost 0.16 against 0.15 ms
    a call on an H100: bench/gpu/probe.py, docs/gpu_probe.json)."""
    return RUN_OPTIONS if provider == CPU else None


def run_serving_session(session, images: np.ndarray, run_options: ort.RunOptions | None =
                        RUN_OPTIONS) -> tuple[np.ndarray, np.ndarray]:
    """export.runtime.run_session with the served run options (run_options_for)."""
    return run_session(session, images, run_options)


# Both models' batchers share one CPU arena (service/memory.py) and each runs up to
# CIFAR2_BATCH_CONCURRENCY batches at once: the warm-up runs that peak of the largest batch.
WARMUP_AT_ONCE = 2 * config.BATCH_CONCURRENCY


def run_at_once(session, n: int, at_once: int, run_options: ort.RunOptions | None) -> None:
    """Run ``at_once`` batches of ``n`` images together, as the batcher does under load (up to
    CIFAR2_BATCH_CONCURRENCY per model): the kept part of the CPU arena that they touch is then
    in the worker's RSS from the start instead of showing as growth at the first queue build-up,
    and the regions they add are given back (service/memory.py)."""
    images = np.zeros((n, 3, 32, 32), np.uint8)
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda _: run_serving_session(session, images, run_options),
                      range(at_once)))


def padding_buckets(provider: str) -> tuple[int, ...]:
    """Batch sizes a batch is padded up to: powers of two up to the largest batch on CUDA
    (CIFAR2_PAD_BATCHES=auto), or on any provider with on; none with off, or auto on the CPU,
    where a row of padding costs as much as a row of real work."""
    if config.PAD_BATCHES == "off" or (config.PAD_BATCHES == "auto" and provider != CUDA):
        return ()
    top = max(1, config.MAX_BATCH_SIZE)
    return tuple(sorted({*(1 << k for k in range(top.bit_length())), top}))


def thread_calls(provider: str) -> int:
    """Model calls a batcher runs in threads at once (service/batcher.py): one on the CPU,
    where a worker has one core and two big calls only thrash it; CIFAR2_BATCH_CONCURRENCY on
    CUDA, where a call mostly waits for the GPU: the setting the H100's bulk figures were
    measured with (docs/gpu.md); one there has not been measured."""
    return 1 if provider == CPU else config.BATCH_CONCURRENCY


def usable_cores() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    container's --cpus, a Kubernetes CPU limit)."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def bulk_threads(provider: str) -> tuple[int, int]:
    """ORT threads of a batch bigger than CIFAR2_INLINE_MAX (one that runs in a thread) on the
    CPU: (its share of the cores while other workers have requests in progress, all of
    CIFAR2_BULK_THREADS while every other worker is idle: borrowed as more lanes of its share
    each). A client's connections can all land on one worker, which then borrows the idle
    cores (service/neighbours.py says why, and when). On a 2-core machine with 2 workers:
    (1, 2), two lanes of one thread; on 16 cores: (8, 16). (0, 0) on CUDA."""
    if provider != CPU:
        return 0, 0
    borrow = config.BULK_THREADS or usable_cores()
    return max(1, borrow // max(1, config.WORKERS)), borrow


def per_shape_sessions(provider: str) -> bool:
    """Whether each padding bucket gets a session of its own (CIFAR2_SESSION_PER_SHAPE)."""
    return config.SESSION_PER_SHAPE == "on" or (config.SESSION_PER_SHAPE == "auto"
                                                 and provider == CUDA)


class ModelFileBroken(RuntimeError):
    """model.onnx in the store is missing, damaged, or not the file that was registered."""


def checked_model_file(stored) -> str:
    """The path of the stored model.onnx, after checking it against the sha256 that the
    exporter wrote into the store's model.json: a file with flipped bytes can still load and
    give wrong answers, so loading is not proof enough."""
    tag, path = str(stored.tag), Path(stored.path_of("model.onnx"))
    fix = (f"re-register the model (`make models`, or `python -m export RUN.pt --register`), or "
           f"check the store with `python -m export.verify {tag}`")
    if not path.is_file():
        raise ModelFileBroken(f"{tag}: {path} is missing; {fix}")
    card = Path(stored.path_of("model.json"))
    try:
        want = json.loads(card.read_text())["files"]["model.onnx"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelFileBroken(f"{tag}: {card} does not list the sha256 of model.onnx, so the "
                              f"file cannot be checked; {fix}") from None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != want:
        raise ModelFileBroken(f"{tag}: {path} is not the registered file (its sha256 differs "
                              f"from model.json: damaged or replaced); {fix}")
    return str(path)


class ServedModel:
    def __init__(self, key: str, stored, device: str, threads: int):
        self.key = key  # "convnet" or "dense": the name clients use
        self.tag = str(stored.tag)
        self.metadata = dict(stored.info.metadata)
        self.labels = dict(stored.info.labels)
        self.classes = list(self.metadata.get("classes", ["airplane", "bird"]))
        path = checked_model_file(stored)
        self.session, self.provider = open_serving_session(path, device, threads)
        # On CUDA each new batch shape costs a cuDNN plan search, and adaptive batching makes
        # every size up to the largest batch: batches are padded up to a few bucket sizes, all
        # of them warmed before the service is ready (docs/gpu.md, bench/gpu/probe.py).
        self.buckets = padding_buckets(self.provider)
        self.run_options = run_options_for(self.provider)
        # bucket -> the session that runs it. ORT's CUDA convolution keeps its plan for the
        # shape of its previous call only, and builds it again whenever the shape changes:
        # batches of mixed sizes on one session cost ~3 ms a call instead of 0.16 ms on an H100
        # (`python -m bench.gpu.shapes`, docs/gpu_shapes.json). A session per bucket sees one
        # shape only. The largest bucket keeps the first session.
        self.sessions = {b: self.session for b in self.buckets}
        if per_shape_sessions(self.provider):
            for b in self.buckets[:-1]:
                self.sessions[b] = open_serving_session(path, device, threads)[0]
        # Largest ORT call on the CPU (CIFAR2_CPU_CHUNK); 0: a batch is one call.
        self.chunk = config.CPU_CHUNK if self.provider == CPU else 0
        # Batches that run in a thread (bulk ones) run on this worker's share of the cores
        # (bulk_threads): a session of their own where that share is more than the model's one
        # thread, not spinning, so a neighbour that gets work has its cores back at once. While
        # every other worker is idle they borrow the rest, as more lanes: more ORT calls of the
        # batch at once, each on that session (service/neighbours.py). A second call in
        # parallel beats one call on twice the threads: 107,650 against 88,210 images/s
        # in-process on 2 cores, calls of 64 images (`python -m bench.bulk_lanes`). The event
        # loop's small batches keep the model's session.
        self.share_threads, borrow_threads = bulk_threads(self.provider)
        self.share_session = (open_serving_session(path, device, self.share_threads,
                                                   spin=False)[0]
                              if self.share_threads > max(1, threads) else None)
        self.lanes = max(1, borrow_threads // max(1, self.share_threads))
        self.lane_pool = (ThreadPoolExecutor(self.lanes - 1, thread_name_prefix=f"{key}-lane")
                          if self.lanes > 1 else None)
        self.bulk_calls = [0, 0]  # ORT calls of bulk batches: [on its own lane, borrowed lanes]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N,3,32,32] -> (logits, probabilities), float32 [N,2] each."""
        bulk = self.share_threads > 0 and len(images) > config.INLINE_MAX
        if self.chunk and len(images) > self.chunk:
            parts = [images[a:a + self.chunk] for a in range(0, len(images), self.chunk)]
            outs = self._bulk_calls(parts) if bulk else [self._call(p) for p in parts]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        if bulk:
            self.bulk_calls[0] += 1
            return self._call(images, self.share_session)
        return self._call(images)

    def _bulk_calls(self, parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ORT calls of a bulk batch, one per part: on this thread (the worker's own lane)
        and, while every other worker is idle, on the borrowed lanes too. Each lane takes the
        next part; a borrowed lane stops after the call in which a neighbour got work, so the
        cores go back within one call (CIFAR2_CPU_CHUNK images, ~1 ms)."""
        out: list = [None] * len(parts)
        todo = iter(range(len(parts)))  # shared by the lanes: taking the next is atomic

        def lane() -> int:
            calls = 0
            for i in todo:
                out[i] = self._call(parts[i], self.share_session)
                calls += 1
                if neighbours().others_busy():
                    break
            return calls

        lent: list = []  # every borrowed lane started, for its result
        running: list = []
        own = 0
        try:
            for i in todo:
                if self.lane_pool is not None and not neighbours().others_busy():
                    running = [h for h in running if not h.done()]
                    more = [self.lane_pool.submit(lane)
                            for _ in range(self.lanes - 1 - len(running))]
                    running += more
                    lent += more
                out[i] = self._call(parts[i], self.share_session)
                own += 1
        finally:
            wait(lent)
            self.bulk_calls[0] += own
        # A borrowed lane's failure fails the batch, as this lane's would.
        self.bulk_calls[1] += sum(h.result() for h in lent)
        return out

    def _call(self, images: np.ndarray, session=None) -> tuple[np.ndarray, np.ndarray]:
        """One ORT call, on ``session`` or else on the session of the images' padding bucket."""
        n = len(images)
        padded = next((b for b in self.buckets if b >= n), n) if self.buckets else n
        session = session or self.sessions.get(padded, self.session)
        if padded == n:
            return run_serving_session(session, images, self.run_options)
        batch = np.zeros((padded, *images.shape[1:]), np.uint8)
        batch[:n] = images
        logits, probs = run_serving_session(session, batch, self.run_options)
        return logits[:n], probs[:n]

    def warmup_sizes(self, batch_sizes) -> tuple[int, ...]:
        """The batch sizes to warm: the configured ones, and every padding bucket."""
        return tuple(sorted({*batch_sizes, *self.buckets}))

    @property
    def version(self) -> str:
        """The BentoML store version: the V2 model version."""
        return self.tag.split(":", 1)[1]

    def warmup(self, batch_sizes) -> dict[int, float]:
        """Run each batch size once, and each padding bucket (ORT allocates, and cuDNN plans,
        per shape); return ms per batch."""
        rng = np.random.default_rng(0)
        times = {}
        batch_sizes = self.warmup_sizes(batch_sizes)
        for n in batch_sizes:
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            t0 = time.perf_counter()
            out = self.run(images)[1]
            times[n] = round((time.perf_counter() - t0) * 1000, 3)
            if out.shape != (n, len(self.classes)) or not np.all(np.isfinite(out)):
                raise RuntimeError(f"{self.tag}: warm-up at batch {n} gave {out.shape} "
                                   "or non-finite probabilities")
        if batch_sizes:  # the largest single ORT call, as many at once as under load
            top = min(max(batch_sizes), self.chunk or max(batch_sizes))
            session = self.share_session or self.sessions.get(top, self.session)
            run_at_once(session, top, WARMUP_AT_ONCE, self.run_options)
        return times

    def card(self) -> dict:
        """What /info shows: from the store metadata, plus what this process really runs."""
        m = self.metadata
        return {"tag": self.tag, "model": m.get("model"), "params": m.get("params"),
                "val_acc": m.get("val_acc"), "train_acc": m.get("train_acc"),
                "recipe": m.get("recipe"), "parity": m.get("parity"), "classes": self.classes,
                "checkpoint_sha256": m.get("checkpoint_sha256"), "labels": self.labels,
                "provider": self.provider, "providers": self.session.get_providers(),
                "sessions": len({id(s) for s in (*self.sessions.values(), self.session,
                                                 self.share_session) if s is not None}),
                "cpu_chunk": self.chunk,
                "bulk_threads": {"own_share": self.share_threads,
                                 "borrowing_idle_cores": self.share_threads * self.lanes},
                "bulk_lanes": self.lanes,
                "bulk_calls": {"own_share": self.bulk_calls[0],
                               "borrowing_idle_cores": self.bulk_calls[1]}}
