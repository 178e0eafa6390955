"""Batching across concurrent requests for one model, in one event loop: every route and
encoding (JSON / .npy /predict, /classify, /compare, V2 JSON and binary) shares it.

Natural batching: no timer. A request that arrives while the model is idle runs at once; the
requests that arrive while a batch is running go together into the next one. Low load costs no
added latency, high load gets big batches. Requests are never split. Up to ``concurrency``
batches run at once (ORT sessions are thread-safe), but only ``thread_calls`` of them in a
thread: on the CPU one, so a small batch runs on the loop while a big one runs in the thread,
and two big ones take turns. With one worker per core, two big calls at once in each worker put
four ORT threads on two cores.
Bulk /predict (1,024 images) at c=4: 81 against 79 req/s, p99 56 against 92 ms (`python -m
bench.ab_http before:@BEFORE after: --body npy1024 --concurrency 4 --duration 8`, medians of 3
rounds); with CIFAR2_BATCH_CONCURRENCY=1 instead, 83 against 76, and at c=2 76 and 76. A
model call in a thread that takes longer than ``timeout_s`` fails its requests with
TimeoutError (answered 504), and frees the thread's turn: the request layer is in front of
BentoML's own request timeout.

Small batches run on the event loop itself: for up to ``inline_max`` images (~3 ms of the
convnet on one core) handing the call to a thread and back cost more than it overlapped, with
one worker per core (+2.5% req/s, p99 at c=32 9.7 -> 8.6 ms: medians of 5 rounds of
`python -m bench.ab_http`). Bigger batches go to a thread, so the loop keeps reading requests.

Each request learns what its batch was (``Ran``): the replies carry it as X-Batch-Size and
X-Queue-Ms, and /metrics histograms count it.

Admission by expected queueing delay, not by a count of requests: the batcher knows the images
waiting and running and what an image costs (a moving average over model calls), so it knows
how long a new request would wait. A request whose own images would push that wait past
``max_queue_ms`` is refused (QueueFull, answered 503 with Retry-After) unless the model is idle.
Small requests add little, so they keep getting in while a burst of 1,024-image requests is
being turned away, and no one waits seconds behind it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# uint8 [N,3,32,32] -> (logits, probs), each float32 [N,2]
ModelFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1% of a request
class Ran:
    """One request's share of a model call."""
    logits: np.ndarray
    probs: np.ndarray
    batch_size: int  # images in the model call this request rode in
    queue_ms: float  # from joining the queue to the start of that call
    inference_ms: float  # the model call itself


class QueueFull(Exception):
    """The model's queue holds more work than the latency budget allows."""


class MicroBatcher:
    def __init__(self, fn: ModelFn, max_batch: int, enabled=True, concurrency: int = 2,
                 timeout_s: float = 60.0, inline_max: int = 32, max_queue_ms: float = 0,
                 thread_calls: int = 1):
        self.fn = fn
        self.max_batch = max_batch
        self.enabled = enabled
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.inline_max = inline_max
        self.max_queue_ms = max_queue_ms  # 0: no admission control
        self.pending: collections.deque = collections.deque()
        self.tasks: set[asyncio.Task] = set()  # keeps the running drain tasks referenced
        # Drain tasks that will still look at ``pending``. Counted by the tasks themselves,
        # not by ``len(self.tasks)``: a task leaves that set in a done-callback, one loop step
        # after its last look, and a request queued in between found "enough" tasks running
        # and waited forever.
        self.draining = 0
        # model calls in threads at once (one a core can run without sharing; a GPU runs more)
        self.thread_calls = max(1, thread_calls)
        self.thread_turn = asyncio.Semaphore(self.thread_calls)
        self.parallel_calls = min(self.concurrency, self.thread_calls)
        self.batch_sizes: collections.Counter = collections.Counter()  # requests per ORT call
        self.queued_images = 0  # waiting or running
        self.ms_per_image = 0.0  # moving average over model calls; 0 until the first one

    def expected_wait_ms(self, images: int = 0) -> float:
        """How long ``images`` more would wait for their model call, at the recent speed.
        The queued work goes through as many calls at once as may run in threads: work big
        enough to queue up is big batches, and on the CPU those take turns (``thread_calls``
        1); dividing by ``concurrency`` (2) would let them wait up to twice the budget."""
        return (self.queued_images + images) * self.ms_per_image / self.parallel_calls

    async def __call__(self, images: np.ndarray) -> Ran:
        """The model's outputs for ``images`` and the figures of the call they rode in.
        Raises QueueFull when admitting them would break the latency budget."""
        if self.max_queue_ms and self.queued_images:
            wait = self.expected_wait_ms(len(images))
            if wait > self.max_queue_ms:
                raise QueueFull(f"server busy: {self.queued_images} images are queued for this "
                                f"model, about {wait:.0f} ms of work with these, over the "
                                f"{self.max_queue_ms:g} ms budget (CIFAR2_MAX_QUEUE_MS); retry "
                                "shortly, or send smaller requests")
        self.queued_images += len(images)
        try:
            return await self._call(images)
        finally:
            self.queued_images -= len(images)

    async def _call(self, images: np.ndarray) -> Ran:
        queued = time.perf_counter()
        if not self.enabled:
            (logits, probs), start, ms = await self._run([images])
            return Ran(logits, probs, len(images), _ms(start - queued), ms)
        future = asyncio.get_running_loop().create_future()
        self.pending.append((images, future, queued))
        if self.draining < self.concurrency:
            self.draining += 1
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            await self._drain_pending()
        finally:  # in the same step as the last look at ``pending``: no request slips past
            self.draining -= 1

    async def _drain_pending(self) -> None:
        while self.pending:
            group, n = [], 0
            while self.pending and (not group or n + len(self.pending[0][0]) <= self.max_batch):
                group.append(self.pending.popleft())
                n += len(group[-1][0])
            try:
                (logits, probs), start, ms = await self._run([g[0] for g in group])
            except Exception as e:  # noqa: BLE001 - the model failed: each waiting request learns why
                for _, f, _ in group:
                    if not f.done():
                        f.set_exception(e)
                continue
            at = 0
            for images, f, queued in group:
                end = at + len(images)
                if not f.done():  # a client that went away cancelled its future
                    f.set_result(Ran(logits[at:end], probs[at:end], n, _ms(start - queued), ms))
                at = end

    async def _run(self, group: list[np.ndarray]):
        """((logits, probs), start time, ms) of one model call over the group's images."""
        self.batch_sizes[len(group)] += 1
        batch = group[0] if len(group) == 1 else np.concatenate(group)
        if len(batch) <= self.inline_max:
            start = time.perf_counter()
            out = self.fn(batch)
            return out, start, self._timed(start, len(batch))
        async with self.thread_turn:  # its wait counts as queueing, not as the model's time
            start = time.perf_counter()
            try:
                # One timer per model call, not per request. The thread cannot be stopped; the
                # requests waiting on it are answered instead of hanging.
                out = await asyncio.wait_for(asyncio.to_thread(self.fn, batch), self.timeout_s)
            except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
                raise TimeoutError(f"the model took longer than {self.timeout_s:g} s for a batch "
                                   f"of {len(batch)} images") from None
        return out, start, self._timed(start, len(batch))

    def _timed(self, start: float, n: int) -> float:
        """Milliseconds since ``start``; updates the cost of an image (per-call overhead
        included, so small batches count as dearer per image, which errs on the safe side)."""
        ms = _ms(time.perf_counter() - start)
        per_image = ms / n
        self.ms_per_image = per_image if not self.ms_per_image else \
            0.9 * self.ms_per_image + 0.1 * per_image
        return ms

    def stats(self) -> dict:
        calls = sum(self.batch_sizes.values())
        requests = sum(k * v for k, v in self.batch_sizes.items())
        return {"calls": calls, "requests": requests,
                "requests_per_call": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "queued_images": self.queued_images, "thread_calls": self.thread_calls,
                "ms_per_image": round(self.ms_per_image, 4)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
