"""Generator methods stream their items: through real workers, and in process."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

import shmserve
from shmserve.errors import ConfigError, InvalidInput, RunnerError, RunnerTimeout, TensorTooLarge
from tests.runnables import StreamRunnable

pytestmark = pytest.mark.integration


async def collect(stream, limit: int | None = None) -> list:
    out = []
    async for item in stream:
        out.append(item)
        if limit is not None and len(out) >= limit:
            break
    return out


def wait_stopped(stats, want: int) -> dict:
    """Poll the runner's counters until `want` generators ran their finally (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        got = stats()
        if got["stopped"] >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def check_streams(r: shmserve.Runner, tmp_path: Path) -> None:
    async def main() -> None:
        got = await collect(r.count.async_stream(3))
        assert [list(x) for x in got] == [[0, 0], [1, 1], [2, 2]]
        assert await collect(r.words.async_stream("a bb ccc")) == ["a", "bb", "ccc"]
        # each item crosses as it is produced: 'first' arrives while the generator still waits
        gate = tmp_path / "gate"
        stream = r.gated.async_stream(str(gate))
        assert await stream.__anext__() == "first"
        gate.touch()
        assert await collect(stream) == ["second"]
        # leaving early stops the generator (its finally runs)
        assert len(await collect(r.forever.async_stream(), limit=3)) == 3
        with pytest.raises((RunnerError, ValueError), match="broken stream"):  # in process: the error itself
            await collect(r.fails.async_stream())

    asyncio.run(main())
    stats = wait_stopped(r.stats.run, 1)
    assert stats["stopped"] == 1 and stats["produced"] < 400

    # the sync counterpart: same items, and closing early stops the generator too
    assert [list(x) for x in r.count.stream(2)] == [[0, 0], [1, 1]]
    assert list(r.words.stream("x y")) == ["x", "y"]
    it = r.forever.stream()
    first, second = next(it), next(it)
    assert second == first + 1
    it.close()
    assert wait_stopped(r.stats.run, 2)["stopped"] == 2
    with pytest.raises((RunnerError, ValueError), match="broken stream"):
        list(r.fails.stream())

    # timeout bounds the wait for each item: the gate never opens in time
    gate2 = tmp_path / "gate2"
    slow = r.gated.stream(str(gate2), timeout=0.3)
    assert next(slow) == "first"
    with pytest.raises(RunnerTimeout, match="no item"):
        next(slow)
    gate2.touch()  # the generator goes on, sees its caller gone, and stops

    with pytest.raises(ConfigError, match="stream"):
        r.count.run(3)
    with pytest.raises(ConfigError, match="not a generator"):
        r.stats.stream()
    with pytest.raises(ConfigError, match="not a generator"):
        asyncio.run(collect(r.stats.async_stream()))
    assert r.stats.run()  # still serving


def test_streaming_through_workers(unique_name, shm_clean, tmp_path: Path) -> None:
    r = shmserve.Runner(StreamRunnable, name=unique_name, arena_mb=4)
    with shmserve.start(r, workers=1):
        check_streams(r, tmp_path)
        # an item larger than the result arena ends the stream with TensorTooLarge and stops the generator
        stopped = r.stats.run()["stopped"]
        it = r.big.stream(8 * 2**20)
        assert list(next(it)) == [0, 0, 0, 0]
        with pytest.raises(TensorTooLarge):
            next(it)
        assert wait_stopped(r.stats.run, stopped + 1)["stopped"] == stopped + 1
        with shmserve.connect(unique_name) as other:  # another process's view: the same methods
            assert asyncio.run(collect(other.words.async_stream("x y"))) == ["x", "y"]
            assert list(other.words.stream("p q")) == ["p", "q"]
            with pytest.raises(InvalidInput, match="stream"):
                other.words.run("x")
            with pytest.raises(InvalidInput, match="not a generator"):
                other.stats.stream()


def test_streaming_in_process(tmp_path: Path) -> None:
    r = shmserve.Runner(StreamRunnable, name="streams")
    r.init_local(quiet=True)
    try:
        check_streams(r, tmp_path)
    finally:
        r._unbind()


def test_a_generator_cannot_be_batchable() -> None:
    with pytest.raises(ConfigError, match="cannot be batchable"):
        class Bad(shmserve.Runnable):
            @shmserve.Runnable.method(batchable=True)
            def gen(self, x):
                yield x


SERVICE = '''
import shmserve
from shmserve.io import JSON, Text
from tests.runnables import StreamRunnable

runner = shmserve.Runner(StreamRunnable, name="streams_{suffix}")
svc = shmserve.Service("streaming", runners=[runner])


@svc.api(input=Text(), output=Text())
async def words(text):
    async for w in runner.words.async_stream(text):
        yield w + "\\n"


@svc.api(input=JSON(), output=JSON())
def countdown(n):
    for i in range(n, 0, -1):  # a plain function returning a generator: next() runs on the thread pool
        yield {"left": i}


@svc.api(input=JSON(), output=JSON())
async def forever(body):
    return runner.forever.async_stream()


@svc.api(input=JSON(), output=JSON())
async def stats(body):
    return await runner.stats.async_run()
'''


def _chunks(sock, want: int) -> bytes:
    buf = b""
    while buf.count(b"\r\n") < want:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


def test_streamed_http_responses_chunked_and_sse_and_disconnect(tmp_path: Path, shm_clean) -> None:
    import http.client
    import socket
    import uuid

    from tests.integration.test_bentoml_guide import served

    (tmp_path / "stream_service.py").write_text(SERVICE.replace("{suffix}", uuid.uuid4().hex[:8]))
    with served(tmp_path, "stream_service") as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request("POST", "/words", b"one two three", {"Content-Type": "text/plain"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("transfer-encoding") == "chunked"
        assert resp.read() == b"one\ntwo\nthree\n"
        conn.request("POST", "/words", b"a b", {"Content-Type": "text/plain", "Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.getheader("content-type") == "text/event-stream"
        assert resp.read() == b"data: a\ndata: \n\ndata: b\ndata: \n\n"  # each item 'x\n': two data lines
        conn.request("POST", "/countdown", b"2", {"Content-Type": "application/json"})
        assert conn.getresponse().read() == b'{"left":2}{"left":1}'
        # a client that goes away stops the generator in the runner worker
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(b"POST /forever HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        head = _chunks(sock, 12)
        assert b"200 OK" in head and b"transfer-encoding: chunked" in head
        sock.close()

        def stats() -> dict:
            conn.request("POST", "/stats", b"{}", {"Content-Type": "application/json"})
            return orjson.loads(conn.getresponse().read())

        assert wait_stopped(stats, 1)["stopped"] == 1
        conn.close()
