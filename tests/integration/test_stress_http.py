"""Every HTTP answer is the answer to that request: many connections at once, pipelined requests,
clients hanging up with answers in flight, calls timing out mid-flight, async and thread-pool APIs,
several runners (one with two workers), 1 MB arenas so shared-memory blocks are reused quickly, and
a model whose latency varies. Each answer is checked against a value derived from its own body.
"""
from __future__ import annotations

import io
import random
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.test_http_serve import Server, read_response, request

pytestmark = pytest.mark.integration

SOURCE = textwrap.dedent('''
    import asyncio
    import os
    import random
    import time

    import shmserve
    from shmserve.io import NumpyNdarray

    SUFFIX = os.environ["HTTP_TEST_SUFFIX"]


    class Tagged(shmserve.Runnable):
        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def f(self, x):
            if random.random() < 0.3:
                time.sleep(random.random() * 0.004)
            return x * 2 + 1

        @shmserve.Runnable.method(batchable=True, batch_dim=0)
        def ident(self, x):
            if random.random() < 0.3:
                time.sleep(random.random() * 0.004)
            return x


    a = shmserve.Runner(Tagged, name="a-" + SUFFIX, workers=1, arena_mb=1, max_latency_ms=3, max_batch_size=16)
    b = shmserve.Runner(Tagged, name="b-" + SUFFIX, workers=2, arena_mb=1, max_latency_ms=3, max_batch_size=16)
    svc = shmserve.Service("stress", runners=[a, b])


    @svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
    async def f(x):
        return await a.f.async_run(x)


    @svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
    async def two(x):
        u, v = await asyncio.gather(a.ident.async_run(x), b.f.async_run(x))
        return (await b.ident.async_run(u)) + v


    @svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
    def sync(x):
        return b.f.run(x)


    @svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
    async def hurry(x):
        return await a.f.async_run(x, timeout=0.002)
''')

STRESS_S = 6.0
CONNECTIONS = 12
PATHS = ["/f", "/f", "/two", "/sync", "/hurry"]


def expected(path: str, x: np.ndarray) -> np.ndarray:
    return x + (x * 2 + 1) if path == "/two" else x * 2 + 1


def make_request(rnd: random.Random, path: str, tag: int) -> tuple[np.ndarray, bytes]:
    rows = rnd.randint(1, 4)
    # Wide rows only where no call's result is held across another call: leased results stay short-lived.
    width = rnd.choice([1, 3, 3, 8, 1500] + ([2500] if path == "/f" else []))
    x = np.arange(rows * width, dtype=np.float64).reshape(rows, width) + tag * 10_000
    if width > 100 or rnd.random() < 0.3:
        buf = io.BytesIO()
        np.save(buf, x)
        return x, request("POST", path, buf.getvalue(), {"Content-Type": "application/x-npy",
                                                         "Accept": "application/x-npy"})
    return x, request("POST", path, orjson.dumps(x.tolist()), {"Content-Type": "application/json"})


def decode(headers: dict[str, str], body: bytes) -> np.ndarray:
    if headers.get("content-type") == "application/x-npy":
        return np.load(io.BytesIO(body))
    return np.asarray(orjson.loads(body), dtype=np.float64)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.wrong: list[str] = []

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)


def connection_loop(server: Server, k: int, until: float, tally: Tally) -> None:
    try:
        _connection_loop(server, k, until, tally)
    except BaseException as exc:  # reported by the test, with the server's log
        tally.fail(f"connection {k}: {exc!r}")


def _connection_loop(server: Server, k: int, until: float, tally: Tally) -> None:
    rnd = random.Random(k)
    i = 0
    while time.monotonic() < until:
        with server.connect() as sock:
            buf = bytearray()
            for _ in range(rnd.randint(1, 30)):
                if time.monotonic() >= until:
                    break
                sent = []
                for _ in range(rnd.choice([1, 1, 1, 2, 5])):  # pipelined bursts, answered in order
                    i += 1
                    path = rnd.choice(PATHS)
                    x, raw = make_request(rnd, path, k * 1_000_000 + i)
                    sent.append((path, x, raw))
                sock.sendall(b"".join(raw for _, _, raw in sent))
                if rnd.random() < 0.03:
                    tally.add("hung up")
                    break  # gone with answers in flight: their runner calls are cancelled
                for path, x, _ in sent:
                    status, headers, body = read_response(sock, buf)
                    if path == "/hurry" and status in (503, 504):  # overloaded or timed out: said so
                        tally.add(str(status))
                        continue
                    if status != 200:
                        tally.fail(f"connection {k}: {path} answered {status}: {body[:200]!r}")
                        continue
                    y = decode(headers, body)
                    want = expected(path, x)
                    if y.shape != want.shape or not np.array_equal(y, want):
                        tally.fail(f"connection {k}: {path} of rows {x[:, 0].tolist()} answered "
                                   f"{y.reshape(len(y), -1)[:, 0].tolist() if y.ndim else y}")
                    else:
                        tally.add("ok")


def test_every_answer_belongs_to_its_request(tmp_path: Path) -> None:
    server = Server(tmp_path, source=SOURCE)
    tally = Tally()
    try:
        until = time.monotonic() + STRESS_S
        threads = [threading.Thread(target=connection_loop, args=(server, k, until, tally))
                   for k in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(STRESS_S + 60)
        assert not any(t.is_alive() for t in threads), "a connection hung"
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]
    assert not tally.wrong, (f"{len(tally.wrong)} wrong answers, first: {tally.wrong[:3]} ({tally.counts})\n"
                             f"{server.log()[-3000:]}")
    assert tally.counts.get("ok", 0) >= 200, tally.counts
