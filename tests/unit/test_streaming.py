"""Streaming without processes: the worker's item loop on a fake channel, and streamed HTTP bodies."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from shmserve.errors import RunnerTimeout
from shmserve.http.stream import send_stream
from shmserve.io import JSON
from shmserve.shm import ring
from shmserve.worker.stream import stream_items


class FakeChannel:
    """What `stream_items` uses of a WorkerChannel: a response ring that records what was written."""

    def __init__(self, cancel_after: int | None = None, fits: int | None = None) -> None:
        self.written: list[tuple[int, bytes]] = []
        self.cancel_after = cancel_after  # the consumer gives up after this many items
        self.fits = fits  # items after this many do not fit the result arena
        self.waits = 0
        self.view = self  # the request tags of its slots (the HTTP request IDs), as a channel's view has

    def request_tag(self, pos: int, seq: int) -> str:
        return f"rid-{pos}-{seq}"

    def wait_response_slot(self, req: Any, final: bool = False, beat: Any = None) -> bool:
        self.waits += 1
        if beat is not None:
            beat()
        items = sum(1 for code, _ in self.written if code == ring.ST_ITEM)
        return final or self.cancel_after is None or items < self.cancel_after

    def write_result(self, req: Any, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                     batch_size: int) -> int:
        items = sum(1 for c, _ in self.written if c == ring.ST_ITEM)
        if code == ring.ST_ITEM and self.fits is not None and items >= self.fits:
            code = ring.ST_TOO_LARGE
        self.written.append((code, meta))
        return code

    def flush(self) -> None:
        pass


class FakeRequest:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel
        self.seq = 7
        self.slot = 64


class FakeBoard:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin(self, now: float, expected: float) -> None:
        self.calls.append("begin")

    def end(self, now: float) -> None:
        self.calls.append("end")

    def beat(self, now: float) -> None:
        self.calls.append("beat")


def run_stream(gen: Any, ch: FakeChannel, board: FakeBoard | None = None) -> list[int]:
    stream_items(gen, FakeRequest(ch), lambda: None, (0.0, 0.0, 0.0), board)  # type: ignore[arg-type]
    return [code for code, _ in ch.written]


def test_a_failing_generator_is_logged_with_its_request_id(caplog: pytest.LogCaptureFixture) -> None:
    def gen():
        yield 1
        raise ValueError("stream broke\nsecond line")

    ch = FakeChannel()
    with caplog.at_level(logging.WARNING, logger="shmserve.worker"):
        stream_items(gen(), FakeRequest(ch), lambda: None, (0.0, 0.0, 0.0), None, "tokens")  # type: ignore[arg-type]
    assert [code for code, _ in ch.written] == [ring.ST_ITEM, ring.ST_MODEL_ERROR]
    assert [r.getMessage() for r in caplog.records if r.name == "shmserve.worker"] == [
        "runner worker: call 7 of method 'tokens' failed: ValueError: stream broke request_id=rid-64-7"]


def test_items_then_one_final_ok() -> None:
    board = FakeBoard()
    codes = run_stream(iter([1, 2, 3]), FakeChannel(), board)
    assert codes == [ring.ST_ITEM] * 3 + [ring.ST_OK]
    assert board.calls.count("begin") == 4 and board.calls.count("end") == 4  # each next() is progress


def test_async_generators_stream_too() -> None:
    async def agen():
        for i in range(2):
            await asyncio.sleep(0)
            yield i

    assert run_stream(agen(), FakeChannel()) == [ring.ST_ITEM, ring.ST_ITEM, ring.ST_OK]


def test_a_consumer_that_leaves_closes_the_generator() -> None:
    closed = []

    def forever():
        try:
            i = 0
            while True:
                i += 1
                yield i
        finally:
            closed.append(True)

    codes = run_stream(forever(), FakeChannel(cancel_after=2))
    assert codes == [ring.ST_ITEM, ring.ST_ITEM, ring.ST_OK] and closed == [True]


def test_an_error_ends_the_stream_with_its_traceback() -> None:
    def fails():
        yield 1
        raise ValueError("broken stream")

    ch = FakeChannel()
    assert run_stream(fails(), ch) == [ring.ST_ITEM, ring.ST_MODEL_ERROR]
    error = orjson.loads(ch.written[-1][1])
    assert error["type"] == "ValueError" and "broken stream" in error["traceback"]


def test_an_item_too_large_ends_the_call_without_a_second_final_response() -> None:
    closed = []

    def big():
        try:
            yield 1
            yield 2
            yield 3
        finally:
            closed.append(True)

    assert run_stream(big(), FakeChannel(fits=1)) == [ring.ST_ITEM, ring.ST_TOO_LARGE] and closed == [True]


class FakeConn:
    """What `send_stream` uses of HttpProtocol."""

    def __init__(self, paused_polls: int = 0) -> None:
        self.out: list[Any] = []
        self.paused_polls = paused_polls

    @property
    def writing_paused(self) -> bool:
        if self.paused_polls:
            self.paused_polls -= 1
            self.out.append("paused")
            return True
        return False

    def start_stream(self, status: int, ctype: bytes, extra: bytes = b"") -> None:
        self.out.append(("head", status, ctype))

    def send_chunk(self, data: bytes) -> None:
        self.out.append(data)

    def end_stream(self) -> None:
        self.out.append("end")

    def close(self) -> None:
        self.out.append("closed")

    def reply_error(self, status: int, error: str, message: str, extra: bytes = b"") -> None:
        self.out.append(("error", status, error))


async def agen(items: list[Any], fail: BaseException | None = None):
    for x in items:
        yield x
    if fail is not None:
        raise fail


def send(conn: FakeConn, items: Any, accept: bytes = b"") -> int:
    return asyncio.run(send_stream(conn, "api", JSON(), items, accept, 200, b"", None))  # type: ignore[arg-type]


def test_chunked_and_event_stream_bodies() -> None:
    conn = FakeConn()
    assert send(conn, agen([{"a": 1}, [2]])) == 200
    assert conn.out == [("head", 200, b"application/json"), b'{"a":1}', b"[2]", "end"]
    conn = FakeConn()
    send(conn, agen(["x"]), accept=b"text/event-stream")
    assert conn.out == [("head", 200, b"text/event-stream"), b'data: "x"\n\n', "end"]


def test_a_sync_generator_streams_through_the_executor() -> None:
    conn = FakeConn()
    assert send(conn, (i for i in range(2))) == 200
    assert conn.out[1:] == [b"0", b"1", "end"]


def test_failing_before_the_first_item_is_a_normal_error_and_after_it_a_truncated_body() -> None:
    conn = FakeConn()
    assert send(conn, agen([], RunnerTimeout("slow"))) == 504  # the runner error's own status
    assert conn.out == [("error", 504, "RunnerTimeout")]
    conn = FakeConn()
    assert send(conn, agen([1], ValueError("late"))) == 500
    assert conn.out[-1] == "closed" and "end" not in conn.out


def test_no_item_is_taken_while_the_peer_does_not_read() -> None:
    async def items():
        for i in range(2):
            yield i

    conn = FakeConn(paused_polls=3)
    send(conn, items())
    # the second item was produced only after the three paused polls that followed the first chunk
    assert conn.out[1:6] == [b"0", "paused", "paused", "paused", b"1"]


def test_an_empty_stream_is_an_empty_body() -> None:
    conn = FakeConn()
    send(conn, agen([]))
    assert conn.out == [("head", 200, b"application/json"), "end"]


def test_a_sync_stream_inside_a_running_loop_names_async_stream() -> None:
    import shmserve
    from shmserve.errors import BlockingCall
    from tests.runnables import StreamRunnable

    class WorkerBackend:  # stands in for the shared-memory client
        def stream(self, method: str, args: Any, kwargs: Any, timeout: Any) -> Any:
            return iter(["from a worker"])

        def close(self) -> None:
            pass

    runner = shmserve.Runner(StreamRunnable, name="guard_stream")
    runner._bind(WorkerBackend())  # type: ignore[arg-type]

    async def api() -> Any:
        return list(runner.words.stream("a b"))

    with pytest.raises(BlockingCall, match=r"async for item in runner\.words\.async_stream\(\.\.\.\)"):
        asyncio.run(api())
    assert list(runner.words.stream("a b")) == ["from a worker"]  # outside a loop it is a plain call


def test_only_calls_over_the_slow_threshold_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    from shmserve.worker.call_log import log_slow

    ch = FakeChannel()
    fast, slow = FakeRequest(ch), FakeRequest(ch)
    fast.submit, slow.submit, slow.seq = 9.95, 9.0, 8
    with caplog.at_level(logging.WARNING, logger="shmserve.worker"):
        log_slow([fast, slow], "predict", 0.5, 9.5, 9.8, 10.0, 3)
        log_slow([fast, slow], "predict", None, 9.5, 9.8, 10.0, 3)  # off: nothing
    assert [r.getMessage() for r in caplog.records if r.name == "shmserve.worker"] == [
        "runner worker: slow call 8 of method 'predict': 1000.0 ms (queue wait 500.0 ms, model 200.0 ms, batch of 3) "
        "request_id=rid-64-8"]
