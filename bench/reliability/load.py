"""HTTP load from raw asyncio sockets: open loop (a fixed arrival rate) and closed loop.

Why not httpx or wrk: on 2 cores the client shares the CPU with the server, and httpx spends
~10x more per request than writing prepared bytes to a socket; wrk cannot hold an arrival rate
(it waits for each reply: closed loop) nor mix routes and count Retry-After. An open-loop client
sends each request at its scheduled time whether or not the earlier ones were answered, so an
overloaded server shows as queueing and rejections instead of a politely slower client, and the
latency is measured from the scheduled time (no coordinated omission).

Each request is prepared once as bytes (``Request``); connections are kept alive and reused
(or fresh per request with ``fresh=True``). Every outcome is a ``Result``: a status, or an error
kind (timeout, reset, closed, refused) that the reliability scripts count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    name: str
    raw: bytes  # the whole HTTP/1.1 request
    expect: tuple[int, ...] = (200,)  # statuses this request is meant to get

    @classmethod
    def post(cls, name: str, path: str, body: bytes, ctype: str, expect=(200,),
             headers: dict | None = None) -> Request:
        head = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return cls(name, ("\r\n".join(head) + "\r\n\r\n").encode() + body, expect)

    @classmethod
    def get(cls, name: str, path: str, expect=(200,)) -> Request:
        return cls(name, f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode(), expect)


@dataclass
class Result:
    name: str
    scheduled: float  # seconds since the run started, when it was due
    done: float  # seconds since the run started, when the reply (or error) came
    status: int | None = None
    error: str | None = None
    retry_after: bool = False
    expected: bool = False  # the status is one of the request's intended ones

    @property
    def latency_ms(self) -> float:
        return (self.done - self.scheduled) * 1e3


@dataclass
class Pool:
    """Keep-alive connections to one server, at most ``size`` at once: an arrival that finds
    them all busy waits for one (and its latency, counted from its due time, shows it)."""

    host: str
    port: int
    fresh: bool = False  # a new connection per request (Connection: close)
    size: int = 256
    idle: list = field(default_factory=list)  # (reader, writer, idle since)
    opened: int = 0

    def __post_init__(self):
        self.slots = asyncio.Semaphore(self.size)

    async def acquire(self, reuse: bool = True):
        """(reader, writer, reused). Connections idle for longer than the server's keep-alive
        (uvicorn: 5 s) are dropped rather than raced against the server closing them."""
        while reuse and self.idle and not self.fresh:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < KEEP_ALIVE_S and not reader.at_eof():
                return reader, writer, True
            writer.close()
        self.opened += 1
        return (*await asyncio.open_connection(self.host, self.port), False)

    def release(self, reader, writer, reusable: bool) -> None:
        if reusable and not self.fresh:
            self.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


KEEP_ALIVE_S = 4.0


async def _exchange(pool: Pool, req: Request, sent: list) -> tuple[int, bool]:
    """Send one request, read its reply; (status, Retry-After present). A reused connection
    that the server had already closed (no byte of a reply) is retried once on a new one, as
    HTTP clients do: the request never reached the server."""
    async with pool.slots:
        for attempt in (0, 1):
            reader, writer, reused = await pool.acquire(reuse=attempt == 0)
            try:
                sent.append(True)
                return await _on(pool, reader, writer, req)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as e:
                if not (reused and attempt == 0 and not getattr(e, "partial", b"")):
                    raise
        raise AssertionError("unreachable")


async def _on(pool: Pool, reader, writer, req: Request) -> tuple[int, bool]:
    ok = False
    try:
        raw = req.raw
        if pool.fresh:
            raw = raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.read()  # until the server closes
            headers["connection"] = "close"
        ok = headers.get("connection", "").lower() != "close"
        return status, "retry-after" in headers
    finally:
        pool.release(reader, writer, ok)


async def one(pool: Pool, req: Request, t0: float, scheduled: float, timeout: float) -> Result:
    """One request due at ``scheduled``; it times out ``timeout`` s after that."""
    result = Result(req.name, scheduled, 0.0)
    left = timeout - (time.perf_counter() - t0 - scheduled)
    sent: list = []
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        result.status, result.retry_after = await asyncio.wait_for(
            _exchange(pool, req, sent), left)
        result.expected = result.status in req.expect
    except asyncio.TimeoutError:
        # Never written: the client itself fell behind (no free connection or CPU), which
        # says nothing about the server; a run with many of these is client-bound.
        result.error = "timeout" if sent else "client backlog"
    except ConnectionRefusedError:
        result.error = "refused"
    except ConnectionResetError:
        result.error = "reset"
    except (asyncio.IncompleteReadError, BrokenPipeError):
        result.error = "closed"
    except OSError as e:
        result.error = f"oserror {e.errno}"
    result.done = time.perf_counter() - t0
    return result


def pick(mix: list[tuple[Request, float]], rng: random.Random) -> Request:
    return rng.choices([r for r, _ in mix], weights=[w for _, w in mix])[0]


async def open_loop(host: str, port: int, mix, rate: float, seconds: float,
                    timeout: float = 10.0, fresh: bool = False, seed: int = 0,
                    progress=None, t0: float | None = None, connections: int = 1024
                    ) -> list[Result]:
    """Requests at ``rate`` per second for ``seconds``, each sent when due regardless of the
    others (on up to ``connections`` connections); waits for every reply or its timeout.
    ``progress(n)`` is called as they start."""
    pool, rng = Pool(host, port, fresh, connections), random.Random(seed)
    t0 = time.perf_counter() if t0 is None else t0
    start = time.perf_counter() - t0
    tasks, sent, frozen = [], 0, start
    total = int(rate * seconds)
    try:
        while sent < total:
            now = time.perf_counter() - t0
            due = min(total, int((now - start) * rate) + 1)
            for i in range(sent, due):
                tasks.append(asyncio.ensure_future(
                    one(pool, pick(mix, rng), t0, start + i / rate, timeout)))
            if progress and due > sent:
                progress(due - sent)
            sent = due
            if now - frozen >= 1.0:
                # Every request's task and result stays until the end (650,000 in a soak),
                # and each full collection walks them all: ever longer pauses of this client
                # late in a run, whose requests then went out late, which the latency (from
                # the due time) charged to the server. Frozen, collections skip them.
                gc.freeze()
                frozen = now
            await asyncio.sleep(max(0.0, start + sent / rate - (time.perf_counter() - t0)))
        results = await asyncio.gather(*tasks)
    finally:
        gc.unfreeze()
    pool.close()
    return list(results)


async def closed_loop(host: str, port: int, mix, concurrency: int, seconds: float,
                      timeout: float = 10.0, seed: int = 0, t0: float | None = None,
                      fresh: bool = False, stop_on_refused: bool = False) -> list[Result]:
    """``concurrency`` clients, each sending its next request when the last one is answered
    (a client stops at its first refused connection with ``stop_on_refused``)."""
    t0 = time.perf_counter() if t0 is None else t0
    end = time.perf_counter() - t0 + seconds
    results: list[Result] = []

    async def client(k: int) -> None:
        pool, rng = Pool(host, port, fresh), random.Random(seed * 1000 + k)
        while time.perf_counter() - t0 < end:
            results.append(await one(pool, pick(mix, rng), t0, time.perf_counter() - t0,
                                     timeout))
            if stop_on_refused and results[-1].error == "refused":
                break
        pool.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return results


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def tally(results: list[Result]) -> Counter:
    """Counts by outcome: '200', '400', '503+RA', '503 no RA', 'timeout', 'reset', ..."""
    out = Counter()
    for r in results:
        if r.error:
            out[r.error] += 1
        elif r.status in (503, 429):
            out[f"{r.status}{'+RA' if r.retry_after else ' no RA'}"] += 1
        else:
            out[str(r.status)] += 1
    return out


def unexpected(results: list[Result]) -> list[Result]:
    """Errors, and statuses other than the intended ones and 503/429 with Retry-After (requests
    the client never sent, "client backlog", are the client's failure and counted apart)."""
    return [r for r in results if r.error != "client backlog" and (r.error or not (
        r.expected or (r.status in (503, 429) and r.retry_after)))]


def run(coro):
    """asyncio.run with uvloop when it is installed (the client's CPU matters here)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
