"""The Open Inference Protocol (KServe V2) over real HTTP, with Triton's own client:
`tritonclient.http` against a real `bentoml serve` of the two tiny models of test_service_http."""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import psutil
import pytest
from conftest import read_reply
from PIL import Image
from test_service_http import (  # noqa: F401 (store is a fixture)
    files,
    free_port,
    natural_stats,
    server_env,
    start_server,
    stop,
    store,
)

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException

X = np.random.default_rng(7).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)


SERVE = {}  # the module's `bentoml serve` process


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-v2") / "serve.log"
    proc, url = start_server(server_env(store), free_port(), log)
    SERVE["proc"] = proc
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    stop(proc)


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(str(server.base_url.netloc.decode()),
                                              concurrency=32, network_timeout=60)
    yield client
    client.close()


def infer(client, model: str, images: np.ndarray, binary: bool, **kw):
    inp = httpclient.InferInput("images", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("probs", "logits")]
    return client.infer(model, [inp], outputs=outputs, **kw)


def test_server_and_model_metadata(triton, server):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "cifar2" and "binary_tensor_data" in meta["extensions"]
    tags = {k: m["tag"] for k, m in server.get("/info").json()["models"].items()}
    for model in ("convnet", "dense"):
        version = tags[model].split(":")[1]
        assert triton.is_model_ready(model) and triton.is_model_ready(model, version)
        md = triton.get_model_metadata(model, version)
        assert md["name"] == model and md["versions"] == [version] and md["tag"] == tags[model]
        assert md["platform"] == "onnxruntime_onnx"
        assert md["inputs"] == [{"name": "images", "datatype": "UINT8",
                                 "shape": [-1, 3, 32, 32]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in md["outputs"]] == \
            [("logits", "FP32", [-1, 2]), ("probs", "FP32", [-1, 2])]
    assert not triton.is_model_ready("resnet")


@pytest.mark.parametrize("model", ["convnet", "dense"])
@pytest.mark.parametrize("n", [1, 3, 64])
def test_infer_binary_and_json_equal_predict_and_classify(triton, server, model, n):
    images = X[:n]
    as_binary = infer(triton, model, images, binary=True, request_id=f"req-{n}")
    as_json = infer(triton, model, images, binary=False)
    assert as_binary.get_response()["id"] == f"req-{n}"
    probs = as_binary.as_numpy("probs")
    logits = as_binary.as_numpy("logits")
    assert probs.shape == logits.shape == (n, 2) and probs.dtype == np.float32
    assert np.allclose(as_json.as_numpy("probs"), probs, atol=1e-6)
    assert np.allclose(as_json.as_numpy("logits"), logits, atol=1e-6)
    exp = np.exp(logits - logits.max(1, keepdims=True))
    assert np.allclose(exp / exp.sum(1, keepdims=True), probs, atol=1e-5)
    # the same pixels through the other routes
    pngs = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im.transpose(1, 2, 0)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    classified = server.post("/classify", files=files(*pngs), data={"model": model}).json()
    got = np.array([[p["probabilities"]["airplane"], p["probabilities"]["bird"]]
                    for p in classified["predictions"]])
    assert np.allclose(got, probs, atol=1e-6)  # /classify rounds to 6 decimals
    if model == "convnet":
        assert np.allclose(server.post("/predict", json={"images": images.tolist()}).json(),
                           probs, atol=1e-6)


def test_only_the_outputs_asked_for(triton):
    inp = httpclient.InferInput("images", [2, 3, 32, 32], "UINT8")
    inp.set_data_from_numpy(X[:2])
    result = triton.infer("convnet", [inp], outputs=[httpclient.InferRequestedOutput("probs")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probs"]
    assert result.as_numpy("logits") is None
    default = triton.infer("convnet", [inp])  # no outputs named: both, in binary
    assert {o["name"] for o in default.get_response()["outputs"]} == {"probs", "logits"}


def _raw_infer(server, header: bytes, binary: bytes, length: int | None = None):
    return server.post("/v2/models/convnet/infer", content=header + binary, headers={
        "inference-header-content-length": str(len(header) if length is None else length)})


ERRORS = [
    # (what, call(triton), status, words)
    ("unknown model", lambda c: infer(c, "resnet", X[:1], True), "404", "unknown model"),
    ("unknown version", lambda c: infer(c, "convnet", X[:1], True, model_version="9"), "404",
     "no version '9'"),
    ("FP32 input", "fp32", "400", "datatype 'FP32'"),
    ("wrong shape", "shape", "400", "shape [1, 32, 32, 3]"),
    ("out of range", "range", "400", "0..255"),
]


@pytest.mark.parametrize("what, call, status, words", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_reach_the_client_with_our_message(triton, what, call, status, words):
    if call == "fp32":
        inp = httpclient.InferInput("images", [1, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(X[:1].astype(np.float32))
        call = lambda c: c.infer("convnet", [inp])
    elif call == "shape":
        inp = httpclient.InferInput("images", [1, 32, 32, 3], "UINT8")
        inp.set_data_from_numpy(X[:1].transpose(0, 2, 3, 1).copy())
        call = lambda c: c.infer("convnet", [inp])
    elif call == "range":
        inp = httpclient.InferInput("images", [1, 3, 32, 32], "UINT16")
        inp.set_data_from_numpy(X[:1].astype(np.uint16) * 300, binary_data=False)
        inp._datatype = "UINT8"  # a client that lies about its datatype
        call = lambda c: c.infer("convnet", [inp])
    with pytest.raises(InferenceServerException) as e:
        call(triton)
    assert e.value.status() == status and words in e.value.message(), e.value.message()


def test_binary_size_that_does_not_match_the_body(server):
    import json

    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                     "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 3072}}]}).encode()
    r = _raw_infer(server, header, X[:1].tobytes()[:3000])
    assert r.status_code == 400 and "the body has 3000 bytes" in r.json()["error"]
    result = httpclient.InferResult.from_response_body(
        _raw_infer(server, header, X[:1].tobytes()).content, False, None)
    assert result.get_response()["outputs"][0]["name"] == "logits"  # JSON reply: no binary asked
    r = _raw_infer(server, header, X[:1].tobytes(), length=10**6)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    r = server.get("/v2/models/convnet/infer")
    assert r.status_code == 405 and r.json()["error"]
    r = server.get("/v2/nothing/here")
    assert r.status_code == 404 and "/v2/models" in r.json()["error"]


def test_concurrent_binary_clients_are_batched(triton, server):
    """tritonclient's own concurrency (32 connections, gevent): 0 errors. Then 32 requests in
    tritonclient's binary form that reach the server together share model calls.

    The second part does not rely on tritonclient's pacing: its Python client sends far slower
    than the server answers, so its requests may each find the model idle and run alone (and
    so may requests sent from one Python loop). Here each of 32 connections sends its request
    but the last byte, and the worker accepts them all; then the worker is stopped, the last
    bytes are sent, and the worker goes on: it finds 32 whole requests at once."""
    pending = []
    for i in range(256):
        inp = httpclient.InferInput("images", [1, 3, 32, 32], "UINT8")
        inp.set_data_from_numpy(X[i % 64:i % 64 + 1])
        pending.append(triton.async_infer("convnet", [inp]))
    results = [p.get_result() for p in pending]
    assert len(results) == 256 and all(r.as_numpy("probs").shape == (1, 2) for r in results)

    inp = httpclient.InferInput("images", [1, 3, 32, 32], "UINT8")
    inp.set_data_from_numpy(X[:1])
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    request = (f"POST /v2/models/convnet/infer HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
               f"Inference-Header-Content-Length: {json_size}\r\n\r\n").encode() + body
    address = (server.base_url.host, server.base_url.port)
    requests0, calls0 = natural_stats(server)
    sockets = [socket.create_connection(address, timeout=30) for _ in range(32)]
    try:
        for sock in sockets:  # no Nagle: a last byte must not wait for an ACK of the rest
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request[:-1])
        workers = psutil.Process(SERVE["proc"].pid).children(recursive=True)
        _wait_until_accepted(workers, {sock.getsockname()[1] for sock in sockets})
        for worker in workers:
            worker.suspend()
        try:
            for worker in workers:
                while worker.status() != psutil.STATUS_STOPPED:
                    time.sleep(0.001)
            for sock in sockets:
                sock.sendall(request[-1:])
            time.sleep(0.1)  # every last byte is in the worker's socket buffers
        finally:
            for worker in workers:
                worker.resume()
        replies = [read_reply(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    requests1, calls1 = natural_stats(server)
    assert [status for status, _, _ in replies] == [200] * 32
    sizes = [int(headers["x-batch-size"]) for _, headers, _ in replies]
    assert requests1 - requests0 == 32 and calls1 - calls0 < 32 and max(sizes) > 1, sizes


def _wait_until_accepted(workers, client_ports: set[int], timeout_s: float = 10) -> None:
    """A worker accepts one new connection per event-loop iteration (uvloop): until it has
    accepted them all, a connection's request is not read even when its bytes are there."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        accepted = {c.raddr.port for w in workers for c in w.net_connections("tcp") if c.raddr}
        if client_ports <= accepted:
            return
        time.sleep(0.01)
    raise TimeoutError(f"the worker accepted {len(client_ports & accepted)} of "
                       f"{len(client_ports)} connections in {timeout_s} s")

