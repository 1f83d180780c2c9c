"""A read full of pipelined requests is parsed a slice at a time, and the rest waits a loop turn.

One 64 KiB read can hold over a thousand small pipelined requests. Parsed and
answered in one go they hold the event loop for every other connection (the
slow-reader attack); `RequestReader` keeps the rest of the read once the
pipeline is full and parses it on a later turn of the loop.
"""
from __future__ import annotations

import asyncio

from shmserve.http.reader import PIPELINE_HIGH, SLICE
from tests.unit.test_http_protocol import make, post, responses

GET = b"GET /docs.json HTTP/1.1\r\nHost: x\r\n\r\n"
MANY = 1200


def _queue_peak(proto, app) -> list[int]:
    """Record the queue length each time a request is dispatched."""
    peaks: list[int] = []
    dispatch = app.dispatch

    def recording(request, conn) -> None:
        peaks.append(len(proto.queue))
        dispatch(request, conn)

    app.dispatch = recording
    return peaks


def _recording(dispatch, name: bytes, order: list[bytes]):
    def recording(request, conn) -> None:
        order.append(name)
        dispatch(request, conn)
    return recording


def test_a_read_of_many_pipelined_requests_never_queues_more_than_a_slice_past_the_limit() -> None:
    proto, tr, app, _ = make()
    peaks = _queue_peak(proto, app)
    proto.data_received(GET * MANY)  # no loop running: the kept rest is parsed at once when the queue drains
    got = responses(tr.data)
    assert len(got) == MANY and all(s == 200 for s, _, _ in got)
    assert max(peaks) <= PIPELINE_HIGH + SLICE // len(GET) + 1, max(peaks)
    assert not tr.paused and not proto.reader.rest.data


def test_the_rest_of_a_read_waits_a_loop_turn_so_another_connection_is_served_first() -> None:
    async def scenario() -> None:
        order: list[bytes] = []
        greedy, tr, app, _ = make()
        other, other_tr, other_app, _ = make()
        for a, name in ((app, b"greedy"), (other_app, b"other")):
            a.dispatch = _recording(a.dispatch, name, order)
        greedy.data_received(GET * MANY)
        served_at_once = len(order)
        assert served_at_once < MANY // 4, "the whole read was served in one turn of the loop"
        assert tr.paused  # the rest waits in the reader; the socket is not read meanwhile
        asyncio.get_running_loop().call_soon(other.data_received, GET)  # arrives while the rest waits
        for _ in range(200):
            await asyncio.sleep(0)
            if len(order) == MANY + 1:
                break
        assert len(responses(tr.data)) == MANY and len(responses(other_tr.data)) == 1
        assert order.index(b"other") <= served_at_once + 2 * (PIPELINE_HIGH + SLICE // len(GET)), order.index(b"other")
        assert not tr.paused and not greedy.reader.rest.data

    asyncio.run(scenario())


def test_a_peer_that_stops_reading_gets_no_more_of_its_kept_requests_parsed() -> None:
    async def scenario() -> None:
        proto, tr, app, _ = make()
        proto.data_received(GET * MANY)
        proto.pause_writing()  # the answers so far filled the transport's buffer
        for _ in range(20):
            await asyncio.sleep(0)
        served = len(app.requests)
        assert served < MANY // 4 and tr.paused and proto.reader.rest.data
        proto.resume_writing()
        for _ in range(200):
            await asyncio.sleep(0)
            if len(app.requests) == MANY:
                break
        assert len(app.requests) == MANY and not tr.paused

    asyncio.run(scenario())


def test_a_large_body_of_known_length_is_parsed_in_one_go() -> None:
    proto, tr, app, _ = make()
    calls: list[int] = []
    parser = proto.reader.parser

    class Counting:
        def __getattr__(self, name):
            return getattr(parser, name)

        def feed_data(self, data) -> None:
            calls.append(len(data))
            parser.feed_data(data)

    proto.reader.parser = Counting()
    body = bytes(range(256)) * 1000
    proto.data_received(post(b"/big", body))
    assert app.requests[0].body == body and len(calls) <= 2, calls


def test_a_chunked_body_split_by_slices_is_joined() -> None:
    proto, tr, app, _ = make()
    chunks = b"".join(b"%x\r\n%s\r\n" % (5000, b"z" * 5000) for _ in range(20)) + b"0\r\n\r\n"
    proto.data_received(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + GET)
    assert app.requests[0].body == b"z" * 100_000 and [r.path for r in app.requests] == [b"/c", b"/docs.json"]


def test_shutdown_answers_the_kept_rest_of_a_read() -> None:
    async def scenario() -> None:
        proto, tr, app, state = make()
        proto.data_received(GET * 300)
        assert proto.reader.rest.data
        state.begin_shutdown()  # the kept bytes were received before it began: they are served
        for _ in range(100):
            await asyncio.sleep(0)
            if tr.closed:
                break
        got = responses(tr.data)
        assert len(got) == 300 and tr.closed
        assert got[-1][1][b"connection"] == b"close" and all(b"connection" not in h for _, h, _ in got[:-1])

    asyncio.run(scenario())
