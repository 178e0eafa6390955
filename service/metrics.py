"""Prometheus metrics for what is answered in front of BentoML's own middlewares.

The request layer (service/routes.py) and the limits run before BentoML's metrics middleware
(see service/frontdoor.py), so BentoML's ``bentoml_service_request_*`` series do not see their
requests; these do, on the same /metrics page:

- ``cifar2_request_total{route,http_response_code}`` and
  ``cifar2_request_duration_seconds{route}``: requests the request layer answered, and as
  ``route="unknown"`` the 404s for paths the service does not serve (service/knownpaths.py);
- ``cifar2_batch_size{route}``, ``cifar2_queue_seconds{route}`` and
  ``cifar2_model_seconds{route}``: per request, the images in the model call it rode in, its
  wait before that call (the X-Batch-Size and X-Queue-Ms reply headers) and the call's own
  time, for every inference route on either path: request time less these two is the HTTP,
  decoding and reply work;
- ``cifar2_rejected_request_total{reason}``: 413 (body too large) and 503 (overloaded, not
  ready, queue_full) answered by service/limits.py, service/info.py and the batcher's
  admission control.

Created on first use, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR for its workers,
and prometheus_client must see it before the first metric is made. Each child series is
resolved once and kept, because ``labels()`` on every request was a measurable cost, and what
requests record reaches /metrics at most FLUSH_S (50 ms) later (below).
"""

from __future__ import annotations

import asyncio
import bisect
import functools

# Seconds; the low end is where a single-image /predict lands on a CPU.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@functools.cache
def _families():
    import prometheus_client as p

    return {
        "total": p.Counter("cifar2_request_total", "requests answered by the request layer",
                           ["route", "http_response_code"]),
        "duration": p.Histogram("cifar2_request_duration_seconds",
                                "request layer: time from reading the body to the reply",
                                ["route"], buckets=BUCKETS),
        "batch": p.Histogram("cifar2_batch_size", "per request: images in the model call it "
                             "rode in (X-Batch-Size)", ["route"], buckets=BATCH_BUCKETS),
        "queue": p.Histogram("cifar2_queue_seconds", "per request: wait for its model call "
                             "(X-Queue-Ms)", ["route"], buckets=BUCKETS),
        "model": p.Histogram("cifar2_model_seconds", "per request: time of the model call it "
                             "rode in", ["route"], buckets=BUCKETS),
        "rejected": p.Counter(
            "cifar2_rejected_request_total",
            "requests refused before reaching the model: body_too_large (413), "
            "overloaded, not_ready or queue_full (503)", ["reason"]),
    }


@functools.cache
def _child(family: str, *labels: str):
    return _families()[family].labels(*labels)


# Recording is deferred and aggregated. In multiprocess mode every Prometheus increment takes a
# lock and writes the worker's mmap file, and one request made six of them: ~20 us, a sixth of
# a single-image request on this path. Here a request adds to in-memory sums (a dict update and
# a bisect), and the sums are written at most FLUSH_S later, one write per bucket touched.
FLUSH_S = 0.05
_counts: dict[tuple, float] = {}  # (family, *labels) -> increment
_hists: dict[tuple, list] = {}  # (family, *labels) -> [count per bucket (+Inf last), sum]
_flush_pending = False


def _count(key: tuple, amount: float = 1.0) -> None:
    _counts[key] = _counts.get(key, 0.0) + amount
    _schedule()


def _observe(key: tuple, value: float, buckets: tuple) -> None:
    h = _hists.get(key)
    if h is None:
        h = _hists[key] = [[0] * (len(buckets) + 1), 0.0]
    h[0][bisect.bisect_left(buckets, value)] += 1
    h[1] += value
    _schedule()


def _schedule() -> None:
    global _flush_pending
    if _flush_pending:
        return
    try:
        asyncio.get_running_loop().call_later(FLUSH_S, flush)
    except RuntimeError:  # no event loop (a script, a test): write at once
        flush()
        return
    _flush_pending = True


def flush() -> None:
    """Write what was recorded since the last flush into the Prometheus series."""
    global _flush_pending
    _flush_pending = False
    counts, hists = dict(_counts), dict(_hists)
    _counts.clear()
    _hists.clear()
    for (family, *labels), amount in counts.items():
        _child(family, *labels).inc(amount)
    for (family, *labels), (per_bucket, total) in hists.items():
        child = _child(family, *labels)
        # The child's own bucket and sum values, so that one write stands for many
        # observations; prometheus_client has no public way to observe in bulk.
        for value, n in zip(child._buckets, per_bucket):
            if n:
                value.inc(n)
        child._sum.inc(total)


def request_done(route: str, status: int, seconds: float) -> None:
    _count(("total", route, str(status)))
    _observe(("duration", route), seconds, BUCKETS)


def batch_done(route: str, batch_size: int, queue_ms: float, model_ms: float) -> None:
    _observe(("batch", route), batch_size, BATCH_BUCKETS)
    _observe(("queue", route), queue_ms / 1000, BUCKETS)
    _observe(("model", route), model_ms / 1000, BUCKETS)


def rejected(reason: str) -> None:
    _count(("rejected", reason))
