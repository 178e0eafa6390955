"""The real server over real HTTP: `bentoml serve` in a subprocess on a free port, with a
temporary BENTOML_HOME holding two tiny models freshly exported by `python -m export`.

The server starts once for the module (a few seconds); every test talks to it with httpx.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import npy, untrained_checkpoint
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIFAR2_", "BENTOML_"))}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
                "CIFAR2_WORKERS": "1", "CIFAR2_DEVICE": "cpu",
                "CIFAR2_DRAIN_S": "0",  # no lame duck when a test stops its server
                **extra})
    return env


def start_server(env: dict, port: int, log: Path, ready: bool = True):
    """`bentoml serve` from the repo root; wait until /readyz is 200 (or, with ready=False,
    until the server answers /livez)."""
    proc = subprocess.Popen([BENTOML, "serve", "--port", str(port), "--host", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/{'readyz' if ready else 'livez'}", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    pytest.fail(f"server not ready in 90 s:\n{log.read_text()[-3000:]}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


_STORES: dict[str, Path] = {}


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A BENTOML_HOME with cifar2-net and cifar2-dense, registered by the real exporter.
    Made once per test run: other test modules import this fixture, and each import is a
    fixture of its own to pytest, so the store itself is cached here."""
    if "home" in _STORES:
        return _STORES["home"]
    root = tmp_path_factory.mktemp("store")
    home = root / "bentoml"
    for name in ("net", "dense"):
        ckpt = untrained_checkpoint(name, root / f"{name}.pt")
        done = subprocess.run(
            [sys.executable, "-m", "export", str(ckpt), "--out", str(root / name),
             "--register", "--quiet"],
            check=False, cwd=ROOT, env=server_env(home), capture_output=True, text=True,
            timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    _STORES["home"] = home
    return home


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """`bentoml serve` on the tiny models; with CIFAR2_TEST_URL, the server already running there
    (scripts/container_test.py runs these tests against the image, with CIFAR2_MAX_IMAGES=16)."""
    if os.environ.get("CIFAR2_TEST_URL"):
        with httpx.Client(base_url=os.environ["CIFAR2_TEST_URL"], timeout=30) as client:
            yield client
        return
    store = request.getfixturevalue("store")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = start_server(server_env(store, CIFAR2_MAX_IMAGES="16"), free_port(), log)
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client
    stop(proc)


def png(color=(200, 30, 30), size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def files(*datas: bytes) -> list:
    return [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(datas)]


X = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)


def test_probes_info_and_no_torch(server, store):
    assert server.get("/livez").status_code == 200
    assert server.get("/readyz").status_code == 200
    info = server.get("/info").json()
    assert info["ready"] and info["error"] is None
    assert set(info["models"]) == {"convnet", "dense"}
    conv = info["models"]["convnet"]
    assert conv["tag"].startswith("cifar2-net:") and conv["params"] == 18090
    assert conv["provider"] == "CPUExecutionProvider" and conv["parity"]
    assert info["models"]["dense"]["params"] == 1574402
    assert set(info["warmup_ms"]["convnet"]) == {"1", "8", "64", "256", "1024"}
    assert info["batching"]["padded_to"] == {"convnet": [], "dense": []}  # none on the CPU
    # One session for every shape, and one more for bulk batches where the worker's share of
    # the cores is more than one thread (one worker here: all of them).
    share = conv["bulk_threads"]["own_share"]
    assert share == conv["bulk_threads"]["borrowing_idle_cores"] >= 1
    assert conv["sessions"] == 1 + (share > 1)
    assert info["models"]["convnet"]["cpu_chunk"] == 64  # bulk batches run 64 images a call
    assert info["batching"]["natural"]["convnet"]["thread_calls"] == 1  # one big call a time
    assert info["batching"]["inline_max"] == 32
    assert info["versions"]["onnxruntime"] and info["batching"]["enabled"]
    assert info["torch_imported"] is False  # the serving process never imports torch


def test_classify_both_models_in_input_order(server):
    images = [png((200, 30, 30)), png((30, 200, 30), (100, 60), "RGB"), png((9, 9, 9, 0),
                                                                          (40, 40), "RGBA")]
    for model in ("convnet", "dense"):
        r = server.post("/classify", files=files(*images), data={"model": model})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == model and body["model_tag"].startswith("cifar2-")
        assert len(body["predictions"]) == 3
        for p in body["predictions"]:
            assert p["label"] in ("airplane", "bird")
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-4
    default = server.post("/classify", files=files(png())).json()
    assert default["model"] == "convnet"


def test_classify_matches_predict_on_the_same_pixels(server):
    pixels = X[0].transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    cls = server.post("/classify", files=files(buf.getvalue())).json()["predictions"][0]
    probs = server.post("/predict", json={"images": X[:1].tolist()}).json()[0]
    assert cls["probabilities"]["airplane"] == pytest.approx(probs[0], abs=1e-5)


def test_compare(server):
    r = server.post("/compare", files=files(png(), png((10, 10, 200))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["models"]) == {"convnet", "dense"}
    assert all(m["inference_ms"] > 0 for m in body["models"].values())
    assert len(body["predictions"]) == 2 and 0 <= body["agreement"] <= 1
    agree = [p["convnet"]["label"] == p["dense"]["label"] for p in body["predictions"]]
    assert body["agreement"] == pytest.approx(sum(agree) / 2)


def test_predict_json_npy_body_and_npy_upload_agree(server):
    as_json = server.post("/predict", json={"images": X.tolist()})
    as_body = server.post("/predict", content=npy(X), headers={"content-type": "application/x-npy"})
    as_file = server.post("/predict", files=[("images", ("x.npy", npy(X)))])
    for r in (as_json, as_body, as_file):
        assert r.status_code == 200, r.text
    probs = np.array(as_json.json())
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(as_body.json(), probs) and np.allclose(as_file.json(), probs)


BAD_REQUESTS = [
    # (path, request kwargs, status, words in the error, image index or None)
    ("/classify", {"files": files(png(), b"\x89PNG garbage")}, 400, "image 1", 1),
    ("/classify", {"files": files(b"")}, 400, "empty file", 0),
    ("/classify", {"data": {"model": "dense"}}, 400, "no images", None),
    ("/classify", {"files": files(*[png()] * 17)}, 413, "limit is 16", None),
    ("/classify", {"files": files(png()), "data": {"model": "resnet"}}, 400, "convnet", None),
    ("/classify", {"data": {"images": "http://127.0.0.1:1/x.png"}}, 400, "upload the file",
     None),
    ("/compare", {"files": files(png(), png(), b"GIF89a broken")}, 400, "image 2", 2),
    ("/predict", {"json": {"images": [[1, 2, 3]]}}, 400, "shape", None),
    ("/predict", {"json": {"images": (X.astype(int) * 2).tolist()}}, 400, "0..255", None),
    ("/predict", {"content": npy(X.astype(np.float32)),
                  "headers": {"content-type": "application/x-npy"}}, 400, "float32", None),
    ("/predict", {"content": b"not numpy", "headers": {"content-type": "application/x-npy"}},
     400, ".npy", None),
    ("/predict", {"content": npy(np.zeros((17, 3, 32, 32), np.uint8)),
                  "headers": {"content-type": "application/x-npy"}}, 400, "limit is 16", None),
    ("/predict", {"json": {"pixels": []}}, 400, "images", None),
    ("/predict", {"files": [("images", ("x.npy", npy(X.astype(np.int16))))]}, 400, "int16",
     None),
]


@pytest.mark.parametrize("path, kwargs, status, words, index", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_naming_the_problem(server, path, kwargs, status, words, index):
    r = server.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.text
    if index is not None:
        assert r.json()["index"] == index
    assert server.post("/classify", files=files(png())).status_code == 200  # still serving


def test_decompression_bomb_and_oversized_body(server):
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, "PNG")
    r = server.post("/classify", files=files(png(), buf.getvalue()))
    assert r.status_code == 413 and "decompression bomb" in r.text and r.json()["index"] == 1
    r = server.post("/predict", content=b"\0" * (16 * 2**20 + 1),
                    headers={"content-type": "application/x-npy"})
    assert r.status_code == 413 and "16 MiB" in r.json()["error"]


def natural_stats(server) -> tuple[int, int]:
    stats = server.get("/info").json()["batching"]["natural"]["convnet"]
    return stats["requests"], stats["calls"]


def test_concurrent_requests_are_batched(server):
    """32 clients at once, each encoding of each route: fewer model calls than requests, and
    every reply says the size of the model call it rode in."""
    as_npy = npy(X[:1])
    as_json = {"images": X[:1].tolist()}
    image = png()
    calls = {
        "predict_json": lambda c: c.post("/predict", json=as_json),
        "predict_npy": lambda c: c.post("/predict", content=as_npy,
                                        headers={"content-type": "application/x-npy"}),
        "classify": lambda c: c.post("/classify", files=files(image)),
    }
    # A client per thread, as 32 real clients would be: one httpx.Client shared by 32 threads
    # can fail with EBADF inside httpcore's connection pool, a race on the client's side.
    clients = threading.local()
    opened = []

    def own_client() -> httpx.Client:
        if not hasattr(clients, "client"):
            clients.client = httpx.Client(base_url=server.base_url, timeout=30)
            opened.append(clients.client)
        return clients.client

    try:
        for name, call in calls.items():
            requests0, calls0 = natural_stats(server)
            with ThreadPoolExecutor(32) as pool:
                replies = list(pool.map(lambda _, c=call: c(own_client()), range(128)))
            assert {r.status_code for r in replies} == {200}, name
            sizes = [int(r.headers["x-batch-size"]) for r in replies]
            assert all(float(r.headers["x-queue-ms"]) >= 0 for r in replies)
            requests1, calls1 = natural_stats(server)
            assert requests1 - requests0 == 128 and calls1 - calls0 < 128, name
            assert min(sizes) >= 1 and max(sizes) > 1, (name, sizes)
    finally:
        for client in opened:
            client.close()


def metric(server, name: str, **labels: str) -> float:
    """The value of one series on /metrics, summed over the workers' series; 0 if absent."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in server.get("/metrics").text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(w in line for w in want):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_and_openapi(server):
    metrics = server.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request_total" in metrics.text
    spec = server.get("/docs.json").json()
    assert {"/classify", "/compare", "/predict", "/v2/models/{model_name}/infer"} <= \
        set(spec["paths"])
    # one error shape, the statuses the front really answers, the .npy form of /predict
    predict = spec["paths"]["/predict"]["post"]
    assert predict["responses"]["413"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Error"}
    assert "application/x-npy" in predict["requestBody"]["content"]
    assert "/ui" in spec["info"]["description"]


def test_requests_in_front_of_bentoml_are_counted_in_metrics(server):
    """The request layer and the limits answer before BentoML's metrics middleware; they count
    their own requests, and every request's batch size and model time, on the same /metrics
    page. A request the limits refuse counts under its route too (the 413)."""
    ok, bad = npy(X[:1]), b"not an npy file"

    def counts():
        return ([metric(server, "cifar2_request_total", route="/predict", http_response_code=c)
                 for c in ("200", "400", "413")]
                + [metric(server, "cifar2_request_duration_seconds_count", route="/predict"),
                   metric(server, "cifar2_batch_size_count", route="/predict"),
                   metric(server, "cifar2_batch_size_count", route="/classify"),
                   metric(server, "cifar2_model_seconds_count", route="/predict"),
                   metric(server, "cifar2_rejected_request_total", reason="body_too_large")])

    # The earlier tests' requests reach /metrics up to 50 ms after their replies: wait until
    # the page stops moving, or their late writes would count as this test's.
    before, settled = None, counts()
    while before != settled:
        time.sleep(0.2)
        before, settled = settled, counts()
    for body, n in ((ok, 3), (bad, 2)):
        for _ in range(n):
            server.post("/predict", content=body, headers={"content-type": "application/x-npy"})
    server.post("/classify", files=files(png()))
    server.post("/predict", content=b"\0" * (16 * 2**20 + 1),
                headers={"content-type": "application/x-npy"})
    want = [3, 2, 1, 6, 3, 1, 3, 1]
    deadline = time.monotonic() + 3  # a worker writes what it recorded within 50 ms
    while (got := [b - a for a, b in zip(before, counts())]) != want \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == want


def test_cuda_device_without_gpu_fails_readiness_clearly(store, tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so the CUDA provider fails on any machine.
    env = server_env(store, CIFAR2_DEVICE="cuda", CUDA_VISIBLE_DEVICES="")
    proc, url = start_server(env, free_port(), tmp_path / "serve.log", ready=False)
    try:
        r = httpx.get(f"{url}/readyz", timeout=10)
        assert r.status_code == 503 and "CUDA" in r.text, r.text
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["ready"] is False and "CUDA" in info["error"] and info["models"] == {}
        r = httpx.post(f"{url}/classify", files=files(png()), timeout=10)
        assert r.status_code == 503 and "CUDA" in r.json()["error"] and r.headers["retry-after"]
        r = httpx.post(f"{url}/predict", json={"images": X[:1].tolist()}, timeout=10)
        assert r.status_code == 503
    finally:
        stop(proc)


def test_client_cli(server, tmp_path, capsys):
    from service.client import main

    url = str(server.base_url).rstrip("/")
    a, b, bad = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "bad.png"
    a.write_bytes(png())
    b.write_bytes(png((20, 20, 220), (64, 48)))
    bad.write_bytes(b"nope")
    assert main([str(a), str(b), "--url", url, "--model", "dense"]) == 0
    out = capsys.readouterr().out
    assert "cifar2-dense:" in out and "a.png" in out and "b.png" in out
    assert main([str(a), "--compare", "--url", url]) == 0
    assert "agreement" in capsys.readouterr().out
    assert main([str(a), str(bad), "--url", url]) == 2
    assert "image 1" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), "--url", url]) == 2


@pytest.fixture(scope="module")
def bentoml_path(store, tmp_path_factory):
    """The same service with CIFAR2_FAST_PATH=off: /predict, /classify and /compare through
    BentoML's IO layer and the @bentoml.api methods; the default image limit (1,024)."""
    log = tmp_path_factory.mktemp("serve-bentoml-path") / "serve.log"
    proc, url = start_server(server_env(store, CIFAR2_FAST_PATH="off"), free_port(), log)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    stop(proc)


def test_both_paths_give_the_same_answers(server, bentoml_path):
    images = [png((200, 30, 30)), png((30, 200, 30), (100, 60)), png((9, 9, 9, 0), (40, 40),
                                                                    "RGBA")]
    requests = [
        ("/predict", {"json": {"images": X.tolist()}}),
        ("/predict", {"content": npy(X), "headers": {"content-type": "application/x-npy"}}),
        ("/predict", {"files": [("images", ("x.npy", npy(X)))]}),
        ("/classify", {"files": files(*images), "data": {"model": "dense"}}),
        ("/compare", {"files": files(*images)}),
    ]
    for path, kwargs in requests:
        fast, slow = server.post(path, **kwargs), bentoml_path.post(path, **kwargs)
        assert fast.status_code == slow.status_code == 200, (path, fast.text, slow.text)
        for r in (fast, slow):
            assert int(r.headers["x-batch-size"]) >= 1 and float(r.headers["x-queue-ms"]) >= 0
        a, b = fast.json(), slow.json()
        if path == "/compare":  # timings and batch figures differ from run to run
            for body in (a, b):
                for m in body["models"].values():
                    m.pop("inference_ms"), m.pop("batch_size"), m.pop("queue_ms")
        if path == "/predict":
            assert np.allclose(a, b, atol=1e-6), path
        else:
            assert a == b, path
    assert bentoml_path.get("/info").json()["fast_path"] is False


def test_the_image_limit_itself_is_accepted_on_the_bentoml_path(bentoml_path):
    """Starlette's form parser stops at 1,000 files with its own error; the limit is ours."""
    tiny = png(size=(2, 2))
    r = bentoml_path.post("/classify", files=files(*[tiny] * 1024))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1024, r.text[:300]
    r = bentoml_path.post("/classify", files=files(*[tiny] * 1025))
    assert r.status_code == 413 and "limit is 1024" in r.text, r.text[:300]


def test_the_image_limit_itself_is_accepted_on_the_fast_path(server):
    r = server.post("/classify", files=files(*[png(size=(2, 2))] * 16))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 16
    r = server.post("/compare", files=files(*[png(size=(2, 2))] * 17))
    assert r.status_code == 413 and "limit is 16" in r.json()["error"]


def test_bentoml_sync_http_client_gets_the_same_answers(server, tmp_path):
    """BentoML's own client (it reads /schema.json, sends JSON or multipart) against the
    request layer that answers in front of the @bentoml.api methods."""
    import bentoml

    a = tmp_path / "a.png"
    a.write_bytes(png((20, 20, 220), (64, 48)))
    url = str(server.base_url).rstrip("/")
    with bentoml.SyncHTTPClient(url, timeout=30) as client:
        classified = client.classify(images=[a], model="dense")
        compared = client.compare(images=[a])
        probs = client.predict(images=X.tolist())
    direct = server.post("/classify", files=files(a.read_bytes()), data={"model": "dense"})
    assert classified == direct.json()
    assert compared["predictions"][0]["dense"] == direct.json()["predictions"][0]
    assert np.allclose(np.asarray(probs), server.post("/predict", json={
        "images": X.tolist()}).json(), atol=1e-6)
