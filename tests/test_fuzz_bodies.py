"""Hypothesis against the binary request bodies, on a real `bentoml serve`: raw .npy /predict
bodies and V2 (Open Inference Protocol) infer requests with Triton's binary tensor extension.

Truncated files, headers that lie about the shape or the length, huge declared sizes, wrong
dtypes and datatypes, values out of the UINT8 range: every one must get a 4xx whose JSON body
names the problem, never a 5xx, never a hang, and the server must keep serving. Each property
makes a few dozen requests; the server's log must hold no traceback at the end.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service_http import (  # store is a fixture
    free_port,
    server_env,
    start_server,
    stop,
    store,  # noqa: F401
)

MAX_IMAGES = 16
IMAGE_BYTES = 3 * 32 * 32
NPY = {"content-type": "application/x-npy"}
V2 = "/v2/models/convnet/infer"
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_server(server_env(store, CIFAR2_MAX_IMAGES=str(MAX_IMAGES)), free_port(),
                             log)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
        # Whatever came before, it still answers a good request.
        ok = client.post("/predict", content=npy_file("|u1", (1, 3, 32, 32), bytes(IMAGE_BYTES)),
                         headers=NPY)
        assert ok.status_code == 200, ok.text
    stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


@pytest.fixture(scope="module")
def v2(served):
    if served.get("/v2/models/convnet").status_code != 200:
        pytest.skip("this service has no V2 routes (GET /v2/models/convnet is not 200)")
    return served


def npy_file(descr: str, shape: tuple, data: bytes, fortran: bool = False,
             version: int = 1) -> bytes:
    """An .npy file written by hand, so that its header can say anything."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    size = 2 if version == 1 else 4
    pad = -(10 + (size - 2) + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin-1")
    return (b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(size, "little") + text
            + data)


def assert_4xx_json(r: httpx.Response, *words: str) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    text = body["error"].lower()
    assert any(w.lower() in text for w in words) if words else True, (words, body)


def test_a_valid_npy_body_is_answered(served):
    r = served.post("/predict", content=npy_file("|u1", (2, 3, 32, 32), bytes(2 * IMAGE_BYTES)),
                    headers=NPY)
    assert r.status_code == 200 and len(r.json()) == 2, r.text


GOOD = npy_file("|u1", (2, 3, 32, 32), bytes(range(256)) * 24)


@FUZZ
@given(cut=st.integers(0, len(GOOD) - 1))
def test_npy_truncated_anywhere(served, cut):
    r = served.post("/predict", content=GOOD[:cut], headers=NPY)
    assert_4xx_json(r, "npy", "numpy", "shape", "bytes", "truncated", "header")


@FUZZ
@given(declared=st.integers(1, MAX_IMAGES), short=st.integers(1, MAX_IMAGES * IMAGE_BYTES))
def test_npy_shape_larger_than_the_data(served, declared, short):
    data = bytes(max(declared * IMAGE_BYTES - short, 0))
    r = served.post("/predict", content=npy_file("|u1", (declared, 3, 32, 32), data),
                    headers=NPY)
    assert_4xx_json(r, "npy", "shape", "bytes", "size", "data")


@FUZZ
@given(declared=st.integers(1, MAX_IMAGES), extra=st.integers(1, 3 * IMAGE_BYTES))
def test_npy_shape_smaller_than_the_data(served, declared, extra):
    """Bytes after the declared array: the client meant more images than the header says."""
    data = bytes(declared * IMAGE_BYTES + extra)
    r = served.post("/predict", content=npy_file("|u1", (declared, 3, 32, 32), data),
                    headers=NPY)
    assert_4xx_json(r, "npy", "shape", "bytes", "size", "data")


@FUZZ
@given(shape=st.one_of(
    st.tuples(st.integers(MAX_IMAGES + 1, 2**62), st.just(3), st.just(32), st.just(32)),
    st.tuples(st.integers(1, 4), st.integers(1, 2**40), st.integers(1, 2**20),
              st.integers(1, 2**20)),
    st.lists(st.integers(0, 2**31), min_size=0, max_size=6).map(tuple)))
def test_npy_huge_or_wrong_declared_shapes(served, shape):
    if shape[1:] == (3, 32, 32) and 1 <= shape[0] <= MAX_IMAGES:
        return
    r = served.post("/predict", content=npy_file("|u1", shape, bytes(IMAGE_BYTES)), headers=NPY)
    assert_4xx_json(r, "shape", "limit", "npy", "images", "bytes")


DTYPES = ["<f4", "<f8", "<f2", "<i2", ">u2", "<i8", "|i1", "|b1", "<c8", "|O", "|S4", "<U2",
          "<M8[s]", "<m8[ns]", "|V3", ">f4", "u1", "<u1"]


@FUZZ
@given(descr=st.sampled_from(DTYPES), n=st.integers(1, 3), fortran=st.booleans())
def test_npy_wrong_dtypes(served, descr, n, fortran):
    itemsize = max(np.dtype(descr).itemsize, 1) if descr != "|O" else 8
    body = npy_file(descr, (n, 3, 32, 32), bytes(n * IMAGE_BYTES * itemsize), fortran)
    r = served.post("/predict", content=body, headers=NPY)
    if np.dtype(descr) == np.uint8:  # '|u1' spelled another way: a good request
        assert r.status_code == 200, r.text
        return
    assert_4xx_json(r, "uint8", "dtype", "npy", "pickle", "object")


@FUZZ
@given(header=st.binary(max_size=200), version=st.integers(0, 255),
       length=st.integers(0, 2**16 - 1), tail=st.binary(max_size=64))
def test_npy_garbage_headers(served, header, version, length, tail):
    body = b"\x93NUMPY" + bytes([version, 0]) + length.to_bytes(2, "little") + header + tail
    r = served.post("/predict", content=body, headers=NPY)
    assert_4xx_json(r, "npy", "numpy", "header", "shape", "dtype", "version", "bytes")


# --- V2 / Open Inference Protocol, with the binary tensor extension ---

def v2_binary(header: dict, data: bytes, length: int | str | None = None):
    head = json.dumps(header).encode()
    return head + data, {"content-type": "application/octet-stream",
                         "inference-header-content-length": str(len(head) if length is None
                                                                else length)}


def v2_input(n, datatype="UINT8", size=None, shape=None) -> dict:
    return {"inputs": [{"name": "images", "datatype": datatype,
                        "shape": shape if shape is not None else [n, 3, 32, 32],
                        "parameters": {"binary_data_size": n * IMAGE_BYTES if size is None
                                       else size}}]}


def test_v2_valid_binary_request_is_answered(v2):
    body, headers = v2_binary(v2_input(2), bytes(2 * IMAGE_BYTES))
    r = v2.post(V2, content=body, headers=headers)
    assert r.status_code == 200, r.text


@FUZZ
@given(cut=st.integers(0, 400), n=st.integers(1, 3))
def test_v2_truncated_anywhere(v2, cut, n):
    body, headers = v2_binary(v2_input(n), bytes(n * IMAGE_BYTES))
    head = int(headers["inference-header-content-length"])
    cut = min(cut, head - 1) if cut % 2 else head + cut * 7  # inside the JSON or the tensor
    if cut >= len(body):
        return
    r = v2.post(V2, content=body[:cut], headers=headers)
    assert_4xx_json(r, "header", "json", "bytes", "binary_data_size", "length")


@FUZZ
@given(length=st.one_of(st.integers(-2**40, 2**62), st.sampled_from(["", "abc", "1e3", "0x10",
                                                                      "-0", "+1", "1_0"])))
def test_v2_header_length_that_lies(v2, length):
    body, headers = v2_binary(v2_input(1), bytes(IMAGE_BYTES), length)
    if headers["inference-header-content-length"] == str(len(body) - IMAGE_BYTES):
        return
    r = v2.post(V2, content=body, headers=headers)
    assert_4xx_json(r, "inference-header-content-length", "header", "json", "bytes")


@FUZZ
@given(n=st.integers(1, 4), size=st.integers(0, 2**63), sent=st.integers(0, 5))
def test_v2_binary_sizes_that_lie(v2, n, size, sent):
    if size == n * IMAGE_BYTES and sent == n:
        return
    body, headers = v2_binary(v2_input(n, size=size), bytes(sent * IMAGE_BYTES))
    r = v2.post(V2, content=body, headers=headers)
    assert_4xx_json(r, "binary_data_size", "bytes", "shape")


@FUZZ
@given(shape=st.one_of(
    st.tuples(st.integers(MAX_IMAGES + 1, 2**62), st.just(3), st.just(32), st.just(32)),
    st.lists(st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                       st.text(max_size=3), st.none()), max_size=6).map(tuple)))
def test_v2_huge_or_wrong_shapes(v2, shape):
    if shape[1:] == (3, 32, 32) and type(shape[0]) is int and 1 <= shape[0] <= MAX_IMAGES:
        return
    body, headers = v2_binary(v2_input(1, shape=list(shape)), bytes(IMAGE_BYTES))
    r = v2.post(V2, content=body, headers=headers)
    assert_4xx_json(r, "shape", "limit", "binary_data_size")


@FUZZ
@given(datatype=st.one_of(st.sampled_from(["FP32", "FP16", "INT8", "UINT16", "BYTES", "BOOL",
                                           "uint8", "", "UINT64"]),
                          st.text(max_size=8), st.integers(), st.none()))
def test_v2_wrong_datatypes(v2, datatype):
    if datatype == "UINT8":
        return
    body, headers = v2_binary(v2_input(1, datatype=datatype), bytes(IMAGE_BYTES))
    r = v2.post(V2, content=body, headers=headers)
    assert_4xx_json(r, "datatype", "uint8")


def v2_json(data: list) -> dict:
    return {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 3, 32, 32],
                        "data": data}]}


@FUZZ
@given(values=st.lists(st.one_of(st.integers(-2**70, 2**70),
                                 st.floats(allow_nan=False, allow_infinity=False)),
                       min_size=1, max_size=8))
def test_v2_json_data_out_of_range(v2, values):
    data = [0] * IMAGE_BYTES
    data[:len(values)] = values
    if all(type(v) is int and 0 <= v <= 255 for v in data):
        return
    assert_4xx_json(v2.post(V2, json=v2_json(data)), "0..255", "integers", "uint8", "data")


def test_v2_json_booleans_are_not_uint8(v2):
    assert_4xx_json(v2.post(V2, json=v2_json([True] + [0] * (IMAGE_BYTES - 1))), "integers")
