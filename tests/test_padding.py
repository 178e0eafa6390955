"""Batches padded up to powers of two (CIFAR2_PAD_BATCHES; on by default only on CUDA, where
each new batch shape costs a cuDNN plan search), each bucket on a session of its own
(CIFAR2_SESSION_PER_SHAPE; also CUDA's default, where ORT's convolution re-plans whenever the
shape changes), and big batches cut into ORT calls of CIFAR2_CPU_CHUNK images: a real
`bentoml serve` with all three on the CPU (chunks of 16) answers exactly what one call of the
unpadded model answers, for the real images only."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from conftest import npy
from test_service_http import (  # noqa: F401 (store is a fixture)
    ROOT,
    free_port,
    server_env,
    start_server,
    stop,
    store,
)

from export.runtime import open_session, run_session

BUCKETS = [1, 2, 4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def padded(store, tmp_path_factory):
    env = server_env(store, CIFAR2_PAD_BATCHES="on", CIFAR2_SESSION_PER_SHAPE="on",
                     CIFAR2_CPU_CHUNK="16", CIFAR2_MAX_BATCH_SIZE="64", CIFAR2_MAX_IMAGES="64")
    proc, url = start_server(env, free_port(), tmp_path_factory.mktemp("pad") / "serve.log")
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    stop(proc)


def test_info_lists_the_buckets_and_each_is_warmed(padded):
    info = padded.get("/info").json()
    assert info["batching"]["padded_to"] == {"convnet": BUCKETS, "dense": BUCKETS}
    assert {str(b) for b in BUCKETS} <= set(info["warmup_ms"]["convnet"])
    conv = info["models"]["convnet"]
    # One per bucket, and one for bulk batches where a worker's share of the cores is more
    # than one thread (CIFAR2_BULK_THREADS).
    assert conv["sessions"] == len(BUCKETS) + (conv["bulk_threads"]["own_share"] > 1)
    assert info["models"]["convnet"]["cpu_chunk"] == 16


@pytest.mark.parametrize("n", [5, 33])  # 33: calls of 16, 16 and 1 (padded to 1)
def test_padded_answers_equal_the_model_on_the_real_images(padded, store, n):
    x = np.random.default_rng(n).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    r = padded.post("/predict", content=npy(x), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Batch-Size"] == str(n)  # the images sent, not the padded batch
    got = np.array(r.json())
    tag = padded.get("/info").json()["models"]["convnet"]["tag"]
    name, version = tag.split(":")
    sess, _ = open_session(store / "models" / name / version / "model.onnx", "cpu")
    want = run_session(sess, x)[1]
    assert got.shape == (n, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("name", ["CIFAR2_PAD_BATCHES", "CIFAR2_SESSION_PER_SHAPE"])
def test_a_wrong_setting_names_the_choices(name):
    env = {**os.environ, name: "sometimes"}
    done = subprocess.run([sys.executable, "-c", "import service.config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert f"{name}='sometimes': use one of auto, on, off" in done.stderr
    assert "Traceback" not in done.stderr
