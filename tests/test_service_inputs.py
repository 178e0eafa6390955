"""The service's input handling, in-process and fast: image decoding, tensor parsing, the
body/overload limits and the micro-batcher. The real server is tested in test_service_http.py."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import npy
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from service import routes
from service.batcher import MicroBatcher
from service.errors import BadInput
from service.images import decode_image, decode_images
from service.limits import RequestLimits
from service.sojourn import Sojourn
from service.tensors import parse_tensor


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_32x32_passes_through_exactly(fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(PIXELS), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32)
    np.testing.assert_array_equal(out, PIXELS.transpose(2, 0, 1))


def test_any_size_and_mode_becomes_rgb_32x32():
    big = Image.fromarray(np.full((300, 500, 3), 200, np.uint8))
    assert decode_image(encode(big, "JPEG")).shape == (3, 32, 32)
    gray = decode_image(encode(Image.new("L", (64, 64), 77), "PNG"))
    assert gray.shape == (3, 32, 32) and np.all(gray == 77)
    # Fully transparent pixels composite onto white, whatever colour they store.
    clear = decode_image(encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"))
    assert np.all(clear == 255)


def test_gif_uses_the_first_frame():
    frames = [Image.new("P", (32, 32), 1), Image.new("P", (32, 32), 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(data)
    assert out[0].min() == 255 and out[2].max() == 0  # red, not the blue second frame


@pytest.mark.parametrize("data, words", [
    (b"", "empty file"),
    (b"definitely not an image", "not an image file"),
    (encode(Image.fromarray(PIXELS), "PNG")[:60], "corrupt"),
    (encode(Image.fromarray(PIXELS), "TIFF"), "not an image file"),  # not an accepted format
])
def test_bad_files_name_the_problem_and_index(data, words):
    with pytest.raises(BadInput) as e:
        decode_images([encode(Image.fromarray(PIXELS), "PNG"), data], max_images=8)
    assert words in str(e.value) and e.value.index == 1 and e.value.status == 400


def test_decompression_bomb_is_refused_before_decoding():
    # A 20000x20000 PNG header: decoding it would need 1.2 GB; the check reads only the header.
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(BadInput, match="decompression bomb") as e:
        decode_image(bomb, index=3)
    assert e.value.index == 3 and e.value.status == 413


def test_image_count_limit_and_no_images():
    png = encode(Image.fromarray(PIXELS), "PNG")
    with pytest.raises(BadInput, match="limit is 2"):
        decode_images([png] * 3, max_images=2)
    with pytest.raises(BadInput, match="no images"):
        decode_images([], max_images=2)


@pytest.mark.parametrize("n", [1, 5])
def test_npy_and_json_give_the_same_tensor(n):
    x = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(parse_tensor(npy(x)), x)  # fast header path
    np.testing.assert_array_equal(parse_tensor(npy(np.asfortranarray(x))), x)  # numpy path
    np.testing.assert_array_equal(parse_tensor(x.tolist()), x)


@pytest.mark.parametrize("value, words", [
    ([[1, 2, 3]], "shape"),
    (np.zeros((2, 3, 32, 31), np.uint8).tolist(), "shape"),
    (np.zeros((0, 3, 32, 32), np.uint8).tolist(), "shape"),
    ((np.zeros((1, 3, 32, 32), int) + 256).tolist(), "0..255"),
    ((np.zeros((1, 3, 32, 32), int) - 1).tolist(), "0..255"),
    ((np.zeros((1, 3, 32, 32)) + 0.5).tolist(), "fractional"),
    ([[[["a"] * 32] * 32] * 3], "integers"),
    ([[1, 2], [3]], "ragged"),
    ("hello", "nested lists"),
    (npy(np.zeros((1, 3, 32, 32), np.float32)), "dtype float32"),
    (npy(np.zeros((1, 3, 32, 32), np.int64)), "dtype int64"),
    (npy(np.zeros((3, 32, 32), np.uint8)), "shape"),
    (npy(np.zeros((1, 3, 32, 32), np.uint8))[:-5], "carries 3067 bytes"),
    (b"garbage bytes", "not an .npy file"),
])
def test_bad_tensors_name_the_problem(value, words):
    with pytest.raises(ValueError, match=words):
        parse_tensor(value)


def test_tensor_image_count_limit():
    with pytest.raises(ValueError, match="limit is 4"):
        parse_tensor(npy(np.zeros((5, 3, 32, 32), np.uint8)), max_images=4)


def test_pickled_npy_is_refused_without_unpickling():
    evil = np.array([{"a": 1}], dtype=object)
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    assert b"\x80" in buf.getvalue()  # really a pickle inside
    with pytest.raises(ValueError, match=r"holds Python objects \(a pickle\); it is refused unread"):
        parse_tensor(buf.getvalue())
    with pytest.raises(ValueError):
        parse_tensor(pickle.dumps([1, 2, 3]))


def limited_app(max_body: int, max_in_flight: int, gate: asyncio.Event | None = None):
    async def echo(request):
        body = await request.body()
        if gate is not None:
            await gate.wait()
        return JSONResponse({"bytes": len(body)})

    async def busy(_request):
        return JSONResponse({"error": "queue full"}, status_code=503)

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]),
                            Route("/busy", busy, methods=["POST"])])
    return RequestLimits(app, max_body_bytes=max_body, max_in_flight=max_in_flight)


def test_body_limit_by_content_length_and_by_chunked_stream():
    async def run():
        transport = httpx.ASGITransport(app=limited_app(1000, 10))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            ok = await c.post("/echo", content=b"x" * 1000)
            big = await c.post("/echo", content=b"x" * 1001)

            async def chunks():
                for _ in range(5):
                    yield b"x" * 300
            chunked = await c.post("/echo", content=chunks())
            return ok, big, chunked

    ok, big, chunked = asyncio.run(run())
    assert ok.status_code == 200 and ok.json() == {"bytes": 1000}
    assert big.status_code == 413 and "1001 bytes" in big.json()["error"]
    assert chunked.status_code == 413 and "limit is 1000 bytes" in chunked.json()["error"]


def test_the_middleware_reads_a_body_like_the_request_layer(monkeypatch):
    """Paths behind the limits middleware read a body with the request layer's reader
    (service/bodies.py): one that trickles past CIFAR2_BODY_TIMEOUT_S gets 408 and
    Connection: close, chunked or with Content-Length; one whose client leaves halfway never
    reaches the app; one sent in pieces in time reaches it whole, and the app's next receive
    is the connection's own (it waits for the client to leave, it does not say it left)."""
    monkeypatch.setattr(routes.config, "BODY_TIMEOUT_S", 0.2)
    reached, after = [], []

    async def app(scope, receive, send):
        reached.append((await receive())["body"])
        after.append(asyncio.ensure_future(receive()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(pieces: list[bytes], then: str, length: int | None = None):
        sent, queue = [], list(pieces)

        async def receive():
            if queue:
                return {"type": "http.request", "body": queue.pop(0),
                        "more_body": bool(queue) or then != "end"}
            if then == "leave":
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()  # the client never sends the rest

        async def send(message):
            sent.append(message)

        headers = [] if length is None else [(b"content-length", str(length).encode())]
        scope = {"type": "http", "method": "POST", "path": "/echo", "headers": headers}
        limits = RequestLimits(app, max_body_bytes=1000, max_in_flight=10)
        await asyncio.wait_for(limits(scope, receive, send), 5)
        if after:  # still waiting on the client: the app was not told it left
            await asyncio.sleep(0.01)
            assert not after[-1].done()
            after[-1].cancel()
        return sent

    for length in (None, 6):
        stalled = asyncio.run(call([b"ab"], "stall", length))
        assert stalled[0]["status"] == 408 and (b"connection", b"close") in stalled[0]["headers"]
        assert "CIFAR2_BODY_TIMEOUT_S" in json.loads(stalled[1]["body"])["error"]
    assert asyncio.run(call([b"ab"], "leave")) == [] and reached == []
    assert asyncio.run(call([b"ab", b"cd", b"ef"], "end"))[0]["status"] == 200
    assert reached == [b"abcdef"]


def test_overload_gets_503_with_retry_after_and_recovers():
    async def run():
        gate = asyncio.Event()
        transport = httpx.ASGITransport(app=limited_app(10_000, 2, gate))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/echo", content=b"a")) for _ in range(2)]
            await asyncio.sleep(0.05)  # both are now in progress, waiting on the gate
            rejected = await c.post("/echo", content=b"b")
            gate.set()
            done = await asyncio.gather(*held)
            after = await c.post("/echo", content=b"c")
            app_503 = await c.post("/busy")
            return rejected, done, after, app_503

    rejected, done, after, app_503 = asyncio.run(run())
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert "overloaded" in rejected.json()["error"]
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert app_503.headers["retry-after"] == "1"  # the app's own 503s get the header too


def test_micro_batcher_batches_concurrent_requests_in_order():
    calls = []

    def model(x):
        calls.append(len(x))
        out = x[:, 0, 0, :2].astype(np.float32)
        return -out, out

    async def run():
        batcher = MicroBatcher(model, max_batch=64)
        inputs = [np.full((k, 3, 32, 32), i, np.uint8) for i, k in enumerate([1, 2, 3, 1, 1])]
        outs = await asyncio.gather(*(batcher(x) for x in inputs))
        return inputs, outs, batcher.stats()

    inputs, outs, stats = asyncio.run(run())
    for x, ran in zip(inputs, outs):
        assert ran.probs.shape == (len(x), 2) and np.all(ran.probs == x[0, 0, 0, 0])
        assert np.all(ran.logits == -ran.probs) and ran.inference_ms >= 0 and ran.queue_ms >= 0
    assert sum(calls) == 8 and len(calls) < 5  # fewer ORT calls than requests
    # each request learns the size of the model call it rode in
    assert outs[0].batch_size == calls[0] and {r.batch_size for r in outs} <= set(calls)
    assert stats["requests"] == 5 and stats["calls"] == len(calls)


def test_micro_batcher_respects_max_batch_and_off_switch():
    sizes = []

    def model(x):
        sizes.append(len(x))
        return np.zeros((len(x), 2), np.float32), np.zeros((len(x), 2), np.float32)

    async def run(enabled):
        b = MicroBatcher(model, max_batch=4, enabled=enabled)
        await asyncio.gather(*(b(np.zeros((2, 3, 32, 32), np.uint8)) for _ in range(5)))

    asyncio.run(run(True))
    assert max(sizes) <= 4 and sum(sizes) == 10
    sizes.clear()
    asyncio.run(run(False))
    assert sizes == [2] * 5


def test_micro_batcher_times_out_a_stuck_model_call():
    def stuck(x):
        time.sleep(0.5)

    async def run():
        batcher = MicroBatcher(stuck, max_batch=4, timeout_s=0.05, inline_max=0)
        return await batcher(np.zeros((1, 3, 32, 32), np.uint8))

    with pytest.raises(TimeoutError, match="longer than 0.05 s for a batch of 1 images"):
        asyncio.run(run())


def test_micro_batcher_runs_small_batches_inline_and_big_ones_in_a_thread():
    threads = {}

    def model(x):
        threads[len(x)] = threading.current_thread()
        return np.zeros((len(x), 2), np.float32), np.zeros((len(x), 2), np.float32)

    async def run():
        b = MicroBatcher(model, max_batch=64, inline_max=8)
        for n in (8, 9):
            await b(np.zeros((n, 3, 32, 32), np.uint8))

    asyncio.run(run())
    assert threads[8] is threading.main_thread() and threads[9] is not threading.main_thread()


def test_micro_batcher_runs_one_big_call_in_a_thread_at_a_time_and_small_ones_beside_it():
    """Two big calls at once in a worker would put two ORT threads on its one core: they take
    turns. A small batch still runs on the loop while a big one is in the thread."""
    lock, state = threading.Lock(), {"in_thread": 0, "peak": 0, "small_beside_big": []}

    def model(x):
        if len(x) > 4:  # a thread call
            with lock:
                state["in_thread"] += 1
                state["peak"] = max(state["peak"], state["in_thread"])
            time.sleep(0.05)
            with lock:
                state["in_thread"] -= 1
        else:
            state["small_beside_big"].append(state["in_thread"])
        return np.zeros((len(x), 2), np.float32), np.zeros((len(x), 2), np.float32)

    async def run():
        b = MicroBatcher(model, max_batch=8, concurrency=2, inline_max=4)
        big = [asyncio.create_task(b(np.zeros((8, 3, 32, 32), np.uint8))) for _ in range(3)]
        await asyncio.sleep(0.01)  # the first big call is in its thread, the second waits
        ran = await asyncio.gather(*big)
        first = asyncio.create_task(b(np.zeros((8, 3, 32, 32), np.uint8)))
        await asyncio.sleep(0.01)
        await b(np.zeros((1, 3, 32, 32), np.uint8))  # while ``first`` is in its thread
        await first
        return ran

    ran = asyncio.run(run())
    assert state["peak"] == 1
    assert max(r.queue_ms for r in ran) >= 90  # the third waited for two turns
    assert state["small_beside_big"] == [1]


class _Served:
    """What the request layer needs of the running service: its batchers."""

    def __init__(self, model, timeout_s=60.0):
        self.batchers = {"convnet": MicroBatcher(model, max_batch=64, timeout_s=timeout_s,
                                                 inline_max=0)}


def _halves(x):
    p = np.full((len(x), 2), 0.5, np.float32)
    return p, p


@pytest.mark.parametrize("model, timeout_s, status, words", [
    (_halves, 60.0, 200, None),
    (lambda x: time.sleep(0.5), 0.05, 504, "longer than 0.05 s"),
    (lambda x: 1 / 0, 60.0, 500, "inference failed: ZeroDivisionError"),
])
def test_request_layer_answers_json_for_success_timeout_and_model_failure(
        model, timeout_s, status, words, monkeypatch):
    """The layer sits in front of BentoML's error middleware: every outcome is a JSON reply."""
    monkeypatch.setattr(routes, "get_current_service", lambda: _Served(model, timeout_s))
    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"content-type", b"application/x-npy")]}
    reply = asyncio.run(routes.RequestLayer(None)._answer(
        routes.predict, scope, npy(np.zeros((2, 3, 32, 32), np.uint8)), {}))
    assert reply.status == status
    body = json.loads(reply.body)
    if words:
        assert words in body["error"]
    else:
        assert body == [[0.5, 0.5], [0.5, 0.5]]
        assert (b"x-batch-size", b"2") in reply.headers


def test_front_door_puts_request_layer_then_checks_before_bentoml():
    """The request layer first, making the checks itself with the same RequestLog and
    RequestLimits that guard every other path, then those checks, then BentoML's app."""
    from service.service import CIFAR2

    front = CIFAR2.to_asgi(is_main=True)
    app, chain = front, []
    while type(app).__module__.startswith("service."):
        chain.append(type(app).__name__)
        app = app.app
    assert chain == ["RequestLayer", "RequestLog", "ReadyGate", "RequestLimits", "Drain",
                     "KnownPaths"]
    assert front.log is front.app and front.limits is front.app.app.app
    assert isinstance(app, Starlette)  # BentoML's app, with its own middlewares, comes next


def test_a_server_not_ready_refuses_a_post_without_reading_its_body(monkeypatch):
    """On every other path too (here one BentoML would answer), a POST to a server whose
    models are not loaded gets 503 at once: its body, which never comes, is not waited for."""
    from service import info
    from service.frontdoor import wrap

    monkeypatch.setattr(info, "get_current_service", lambda: None)  # no models loaded yet

    async def call():
        sent = []

        async def receive():
            await asyncio.Event().wait()  # the body never comes

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/some/bentoml/route",
                 "query_string": b"", "headers": [(b"content-length", b"1000")]}
        await asyncio.wait_for(wrap(None)(scope, receive, send), 2)
        return sent

    start, body = asyncio.run(call())
    assert start["status"] == 503 and b"not ready" in body["body"]


def test_admission_by_expected_queueing_delay_lets_small_requests_in():
    """A burst of big requests fills the queue past the budget: more big ones are refused at
    once, a small one still gets in, and an idle model always takes a request."""
    from service.batcher import QueueFull

    def model(x):
        time.sleep(0.0005 * len(x))  # 0.5 ms per image, in a thread (inline_max=0)
        z = np.zeros((len(x), 2), np.float32)
        return z, z

    async def run():
        b = MicroBatcher(model, max_batch=256, concurrency=1, inline_max=0, max_queue_ms=200)
        await b(np.zeros((64, 3, 32, 32), np.uint8))  # learns the cost of an image
        big = [asyncio.create_task(b(np.zeros((256, 3, 32, 32), np.uint8))) for _ in range(8)]
        await asyncio.sleep(0.01)
        small = await b(np.zeros((1, 3, 32, 32), np.uint8))
        outcomes = await asyncio.gather(*big, return_exceptions=True)
        alone = await b(np.zeros((2048, 3, 32, 32), np.uint8))  # over budget, but idle
        return small, outcomes, alone, b

    small, outcomes, alone, b = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    assert small.probs.shape == (1, 2) and alone.probs.shape == (2048, 2)
    assert 0 < len(refused) < 8 and "CIFAR2_MAX_QUEUE_MS" in str(refused[0])
    assert b.queued_images == 0 and 0.3 < b.ms_per_image < 5


def test_big_requests_that_are_admitted_wait_about_the_budget_not_twice_it():
    """Two batches may be in flight but only one in a thread (the CPU's ``thread_calls``):
    big requests take turns, so the expected wait counts them one after the other. Dividing
    the queued work by both let the last admitted requests wait up to twice the budget."""
    from service.batcher import QueueFull

    def model(x):
        time.sleep(0.0005 * len(x))  # 0.5 ms per image, in a thread (inline_max=0)
        z = np.zeros((len(x), 2), np.float32)
        return z, z

    async def run():
        b = MicroBatcher(model, max_batch=128, concurrency=2, inline_max=0, max_queue_ms=200,
                         thread_calls=1)
        await b(np.zeros((64, 3, 32, 32), np.uint8))  # learns the cost of an image
        big = [asyncio.create_task(b(np.zeros((128, 3, 32, 32), np.uint8))) for _ in range(12)]
        return await asyncio.gather(*big, return_exceptions=True)

    outcomes = asyncio.run(run())
    served = [o for o in outcomes if not isinstance(o, QueueFull)]
    assert 0 < len(served) < len(outcomes)
    # Each call takes ~64 ms: a budget of 200 ms admits ~3 requests, not ~6 that wait 320 ms
    assert max(o.queue_ms for o in served) < 1.3 * 200, [o.queue_ms for o in served]


def test_a_body_that_trickles_past_the_timeout_gets_408_and_closes(monkeypatch):
    """A client that sends part of a body and stalls: 408 naming the setting, Connection: close,
    instead of holding the connection (and a SIGTERM drain) for as long as it likes. A body in
    several pieces that arrives in time is read whole."""
    monkeypatch.setattr(routes.config, "BODY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(routes, "get_current_service", lambda: None)  # no model is reached

    async def call(pieces: list[bytes], stall: bool):
        sent, queue = [], list(pieces)

        async def receive():
            if queue:
                body = queue.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(queue) or stall}
            await asyncio.Event().wait()  # the client never sends the rest

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
                 "headers": [(b"content-type", b"application/x-npy")]}
        t0 = time.perf_counter()
        # wait_for: without the body timeout this would wait forever; fail instead
        await asyncio.wait_for(routes.RequestLayer(None)(scope, receive, send), 5)
        return sent, time.perf_counter() - t0

    sent, took = asyncio.run(call([b"\x93NUMPY"], stall=True))
    start, body = sent
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert "CIFAR2_BODY_TIMEOUT_S" in json.loads(body["body"])["error"] and took < 2
    sent, _ = asyncio.run(call([b"not", b" an", b" npy"], stall=False))
    assert sent[0]["status"] == 400  # read whole, then refused for what it is


def test_sojourn_rule_is_codel_minimum_per_window():
    s = Sojourn(target_s=0.1, window_s=0.1)
    s.answered(body_done=0.0, now=0.05)  # opens the window [0.05, 0.15)
    s.answered(body_done=0.0, now=0.3)  # a slow one closes it: min 50 ms, not behind
    assert not s.behind(in_progress=5, now=0.31)
    s.answered(body_done=0.0, now=0.32)  # this window's quickest waited 300 ms
    assert s.behind(in_progress=5, now=0.41) and s.last_min == pytest.approx(0.3)
    assert not s.behind(in_progress=0, now=0.42)  # nothing in progress: no backlog
    s.answered(body_done=0.6, now=0.62)  # closes a window with no replies: cleared
    assert not s.behind(in_progress=5, now=0.75)
    s.answered(body_done=0.0, now=0.76)
    s.answered(body_done=0.0, now=0.80)
    assert s.behind(in_progress=5, now=0.87)
    assert not s.behind(in_progress=5, now=1.5)  # a window with no replies clears it


def test_a_worker_that_is_behind_turns_requests_away_before_reading_them():
    """Requests that wait longer than the budget for their reply: the next one is answered 503
    with Retry-After without its body being read, and once the backlog is gone they get in."""
    reads = []

    async def slow(request):
        reads.append(len(await request.body()))
        await asyncio.sleep(0.06)  # a backlog: 60 ms between the body and the reply
        return JSONResponse({"ok": True})

    async def held(request):
        await request.body()
        await gate.wait()
        return JSONResponse({"ok": True})

    app = RequestLimits(Starlette(routes=[Route("/slow", slow, methods=["POST"]),
                                          Route("/held", held, methods=["POST"])]),
                        max_body_bytes=10_000, max_in_flight=100, max_wait_s=0.02)
    gate = asyncio.Event()

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            waiting = asyncio.create_task(c.post("/held", content=b"h"))
            await asyncio.gather(*(c.post("/slow", content=b"x") for _ in range(3)))
            await asyncio.sleep(0.11)
            await c.post("/slow", content=b"x")  # closes a window whose quickest took 60 ms
            before = len(reads)
            turned_away = await c.post("/slow", content=b"y" * 1000)
            unread = len(reads) == before
            gate.set()
            await waiting
            await asyncio.sleep(0.11)
            back = await c.post("/slow", content=b"z")
            return turned_away, unread, back

    turned_away, unread, back = asyncio.run(run())
    assert turned_away.status_code == 503 and turned_away.headers["retry-after"] == "1"
    error = turned_away.json()["error"]
    assert "over the 20 ms budget (CIFAR2_MAX_QUEUE_MS)" in error and unread, error
    assert back.status_code == 200


@pytest.mark.parametrize("concurrency", [1, 2])
def test_no_request_is_stranded_when_a_drain_task_ends(concurrency):
    """Clients that send again the moment their reply arrives: a request queued in the step
    between a drain task's last look at the queue and its exit must still be served (it once
    waited forever, and a SIGTERM drain then waited on it)."""
    def model(x):
        z = np.zeros((len(x), 2), np.float32)
        return z, z

    async def client(b):
        for _ in range(300):
            await b(np.zeros((1, 3, 32, 32), np.uint8))

    async def run():
        b = MicroBatcher(model, max_batch=64, concurrency=concurrency)
        await asyncio.wait_for(asyncio.gather(*(client(b) for _ in range(32))), 20)
        return b

    b = asyncio.run(run())
    assert b.stats()["requests"] == 32 * 300 and b.draining == 0
