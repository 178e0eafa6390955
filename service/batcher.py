"""Batching across concurrent /classify and /compare requests, in one event loop.

Natural batching: no timer. A request that arrives while the model is idle runs at once; the
requests that arrive while a batch is running go together into the next one. Low load costs no
added latency, high load gets big batches. Requests are never split. Up to ``concurrency``
batches run at once (ORT sessions are thread-safe), so two big requests landing in the same
worker use both cores instead of queueing behind each other. A model call in a thread that
takes longer than ``timeout_s`` fails its requests with TimeoutError (the .npy lane answers
504): that lane is in front of BentoML's own request timeout.

Small batches run on the event loop itself: for up to ``inline_max`` images (~3 ms of the
convnet on one core) handing the call to a thread and back cost more than it overlapped, with
one worker per core (+2.5% req/s, p99 at c=32 9.7 -> 8.6 ms: medians of 5 rounds of
`python -m bench.ab_http`). Bigger batches go to a thread, so the loop keeps reading requests.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import numpy as np


class MicroBatcher:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int, enabled=True,
                 concurrency: int = 2, timeout_s: float = 60.0, inline_max: int = 32):
        self.fn = fn
        self.max_batch = max_batch
        self.enabled = enabled
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.inline_max = inline_max
        self.pending: collections.deque = collections.deque()
        self.tasks: set[asyncio.Task] = set()
        self.batch_sizes: collections.Counter = collections.Counter()  # requests per ORT call

    async def __call__(self, images: np.ndarray) -> tuple[np.ndarray, float]:
        """Probabilities for ``images`` and the milliseconds of the ORT call they rode in."""
        if not self.enabled:
            return await self._run([images])
        future = asyncio.get_running_loop().create_future()
        self.pending.append((images, future))
        if len(self.tasks) < self.concurrency:
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        while self.pending:
            group, futures, n = [], [], 0
            while self.pending and (not group or n + len(self.pending[0][0]) <= self.max_batch):
                images, future = self.pending.popleft()
                group.append(images)
                futures.append(future)
                n += len(images)
            try:
                probs, ms = await self._run(group)
            except Exception as e:  # noqa: BLE001 - the model failed: each waiting request learns why
                for f in futures:
                    if not f.done():
                        f.set_exception(e)
                continue
            start = 0
            for images, f in zip(group, futures):
                if not f.done():
                    f.set_result((probs[start:start + len(images)], ms))
                start += len(images)

    async def _run(self, group: list[np.ndarray]) -> tuple[np.ndarray, float]:
        self.batch_sizes[len(group)] += 1
        batch = group[0] if len(group) == 1 else np.concatenate(group)
        t0 = time.perf_counter()
        if len(batch) <= self.inline_max:
            probs = self.fn(batch)
            return probs, round((time.perf_counter() - t0) * 1000, 3)
        try:
            # One timer per model call, not per request. The thread cannot be stopped; the
            # requests waiting on it are answered instead of hanging.
            probs = await asyncio.wait_for(asyncio.to_thread(self.fn, batch), self.timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            raise TimeoutError(f"the model took longer than {self.timeout_s:g} s for a batch of "
                               f"{len(batch)} images") from None
        return probs, round((time.perf_counter() - t0) * 1000, 3)

    def stats(self) -> dict:
        calls = sum(self.batch_sizes.values())
        requests = sum(k * v for k, v in self.batch_sizes.items())
        return {"calls": calls, "requests": requests,
                "requests_per_call": {str(k): v for k, v in sorted(self.batch_sizes.items())}}
