"""Prometheus metrics for the requests answered in front of BentoML's own middlewares.

The .npy /predict lane and the request limits run before BentoML's metrics middleware (see
service/frontdoor.py), so BentoML's ``bentoml_service_request_*`` series do not see them; these
do, on the same /metrics page:

- ``cifar2_fast_predict_request_total{http_response_code}`` and
  ``cifar2_fast_predict_request_duration_seconds``: .npy bodies to POST /predict;
- ``cifar2_rejected_request_total{reason}``: 413 (body too large) and 503 (overloaded, not
  ready) answered by service/limits.py and service/info.py.

Created on first use, in the worker: BentoML sets PROMETHEUS_MULTIPROC_DIR for its workers,
and prometheus_client must see it before the first metric is made. Each child series is
resolved once and kept, because ``labels()`` on every request was a measurable cost.
"""

from __future__ import annotations

import functools

# Seconds; the low end is where a single-image /predict lands on a CPU.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)


@functools.cache
def _families():
    import prometheus_client

    return {
        "total": prometheus_client.Counter(
            "cifar2_fast_predict_request_total", ".npy POST /predict requests (fast lane)",
            ["http_response_code"]),
        "duration": prometheus_client.Histogram(
            "cifar2_fast_predict_request_duration_seconds",
            ".npy POST /predict time from reading the body to the reply (fast lane)",
            buckets=BUCKETS),
        "rejected": prometheus_client.Counter(
            "cifar2_rejected_request_total",
            "requests refused before reaching the service: body_too_large (413), "
            "overloaded or not_ready (503)", ["reason"]),
    }


@functools.cache
def _child(family: str, label: str | None):
    metric = _families()[family]
    return metric if label is None else metric.labels(label)


def fast_predict_done(status: int, seconds: float) -> None:
    _child("total", str(status)).inc()
    _child("duration", None).observe(seconds)


def rejected(reason: str) -> None:
    _child("rejected", reason).inc()
