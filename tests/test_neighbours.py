"""A worker's bulk batches borrow the cores of idle neighbours (service/neighbours.py): the
shared board of which workers have requests in progress, and a real `bentoml serve` with two
workers whose bulk answers are the model's whether the cores were borrowed or not.

    pytest tests/test_neighbours.py
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import npy
from test_service_http import (  # noqa: F401 (store is a fixture)
    free_port,
    server_env,
    start_server,
    stop,
    store,
)

from export.runtime import open_session, run_session
from service import config, runtime
from service import neighbours as neighbours_module
from service.neighbours import PREFIX, Neighbours, board_folder
from service.runtime import bulk_threads, usable_cores


def test_each_worker_sees_whether_the_others_are_busy(tmp_path):
    board = tmp_path / "board"
    first, second, third = (Neighbours(board, i, 3) for i in range(3))
    assert not first.others_busy() and not third.others_busy()
    second.mark(True)
    assert first.others_busy() and third.others_busy()
    assert not second.others_busy()  # its own work does not count
    second.mark(False)
    assert not first.others_busy()


def test_a_replacement_worker_clears_the_byte_its_predecessor_left_busy(tmp_path):
    board = tmp_path / "board"
    first, dying = Neighbours(board, 0, 2), Neighbours(board, 1, 2)
    dying.mark(True)  # and the process is killed before it marks itself idle
    assert first.others_busy()
    Neighbours(board, 1, 2)
    assert not first.others_busy()


@pytest.mark.parametrize("index,workers", [(None, 2), (2, 2), (0, 1)])
def test_without_a_place_on_a_board_everyone_counts_as_busy(tmp_path, index, workers):
    """Outside `bentoml serve`, or with one worker: nothing to borrow, one thread as before."""
    alone = Neighbours(tmp_path / "board", index, workers)
    alone.mark(True)
    assert alone.others_busy()


def test_boards_of_servers_that_are_gone_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(neighbours_module, "board_folder", lambda: tmp_path)
    gone, alive = tmp_path / f"{PREFIX}999999999", tmp_path / f"{PREFIX}{os.getpid()}"
    gone.write_bytes(b"\1\1")
    alive.write_bytes(b"\0\0")
    board = neighbours_module.neighbours.__wrapped__()  # not the worker's cached one
    assert board.others_busy()  # outside `bentoml serve`: nothing to borrow
    assert not gone.exists() and alive.exists()


@pytest.mark.parametrize("bulk,workers,want", [(16, 2, (8, 16)), (2, 2, (1, 2)), (1, 2, (1, 1)),
                                               (3, 4, (1, 3))])
def test_a_bulk_batch_uses_its_share_of_the_cores_or_all_of_them(monkeypatch, bulk, workers,
                                                                   want):
    monkeypatch.setattr(config, "BULK_THREADS", bulk)
    monkeypatch.setattr(config, "WORKERS", workers)
    assert bulk_threads("CPUExecutionProvider") == want
    assert bulk_threads("CUDAExecutionProvider") == (0, 0)  # a CUDA call mostly waits


def lanes_model(monkeypatch, call):
    """A ServedModel's bulk-call machinery alone: two lanes, every neighbour idle, ``call`` as
    its ORT call."""
    monkeypatch.setattr(runtime, "neighbours",
                        lambda: type("Idle", (), {"others_busy": lambda self: False})())
    model = object.__new__(runtime.ServedModel)
    model.share_session, model.lanes, model.bulk_calls = None, 2, [0, 0]
    model.lane_pool = ThreadPoolExecutor(1, thread_name_prefix="test-lane")
    model._call = call
    return model


def test_bulk_lanes_make_each_call_once_and_a_lane_failure_fails_the_batch(monkeypatch):
    parts = [np.full((1, 3, 32, 32), i, np.uint8) for i in range(8)]

    def call(images, session, fail_on=None):
        if threading.current_thread().name.startswith("test-lane"):
            if images[0, 0, 0, 0] == fail_on:
                raise ValueError(f"part {fail_on} failed")
        else:
            time.sleep(0.05)  # the own lane is slow: the borrowed one runs ahead
        return images[:, 0, 0, :1].astype(np.float32), None

    model = lanes_model(monkeypatch, call)
    out = model._bulk_calls(parts)
    assert [int(o[0][0, 0]) for o in out] == list(range(8))  # every part, in order
    assert sum(model.bulk_calls) == 8 and model.bulk_calls[1] > 0

    # The borrowed lane fails on part 3 and ends before the own lane looks again; its error
    # must still reach the batch, not leave a hole in the outputs.
    model = lanes_model(monkeypatch, lambda images, session: call(images, session, fail_on=3))
    with pytest.raises(ValueError, match="part 3 failed"):
        model._bulk_calls(parts)


def test_usable_cores_is_within_what_the_machine_has():
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


@pytest.fixture(scope="module")
def two_workers(store, tmp_path_factory):
    env = server_env(store, CIFAR2_WORKERS="2", CIFAR2_CPU_CHUNK="8", CIFAR2_BULK_THREADS="2")
    proc, url = start_server(env, free_port(), tmp_path_factory.mktemp("nb") / "serve.log")
    with httpx.Client(base_url=url, timeout=30) as client:
        yield proc, client
    stop(proc)


def test_a_lone_bulk_request_borrows_the_idle_core_and_answers_the_same(two_workers, store):
    proc, client = two_workers
    board = board_folder() / f"{PREFIX}{proc.pid}"
    assert board.stat().st_size == 2  # one byte per worker, named by the server's process
    # A full request in calls of 8 images: long enough for the borrowed lane's thread to
    # start and take its turns even on a loaded machine (with 200 images, the small test
    # model's 13 calls could all be over before that thread first ran).
    x = np.random.default_rng(7).integers(0, 256, (1024, 3, 32, 32), dtype=np.uint8)
    before = client.get("/info").json()["models"]["convnet"]
    # Its share of 2 cores is 1 thread (the model's own session); borrowing, a second lane.
    assert before["bulk_threads"] == {"own_share": 1, "borrowing_idle_cores": 2}
    assert before["bulk_lanes"] == 2 and before["sessions"] == 1
    # One client, one request at a time: the other worker is idle, and the keep-alive
    # connection brings /info back to the worker that served the request.
    r = client.post("/predict", content=npy(x), headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    after = client.get("/info").json()["models"]["convnet"]
    own, borrowed = (after["bulk_calls"][k] - before["bulk_calls"][k]
                     for k in ("own_share", "borrowing_idle_cores"))
    # 128 calls of 8 images, each made once, on the two lanes in turn
    assert own + borrowed == 1024 // 8 and borrowed >= 3, (before, after)
    name, version = after["tag"].split(":")
    sess, _ = open_session(store / "models" / name / version / "model.onnx", "cpu")
    np.testing.assert_allclose(np.array(r.json()), run_session(sess, x)[1], atol=1e-6)
