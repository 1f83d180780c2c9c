"""The C parser of the plain request (shmserve/_native/http.c) against httptools, through `HttpProtocol`.

Every stream is fed twice, once with the accelerator (plain requests built in C,
the rest through httptools) and once with httptools alone (as with
``SHMSERVE_PURE_PYTHON=1``); the requests the application sees, the answers
and whether the connection closed must be the same, however the stream is
split into reads. Other tests here pin what the C parser takes and what it
leaves to httptools, so the comparison is not vacuous.
"""
from __future__ import annotations

import re

import pytest

from shmserve.http import reader as reader_mod
from shmserve.http.reader import PIPELINE_HIGH
from shmserve.http.request import Request
from tests.unit.test_http_protocol import make, post, responses

NATIVE = reader_mod._http
needs_native = pytest.mark.skipif(NATIVE is None, reason="shmserve._native._http not built (or pure Python forced)")

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n"
PLAIN = [
    GET,
    post(b"/p", b"hello"),
    post(b"/p", b""),
    b"POST /x HTTP/1.1\r\nContent-Type: application/json\r\nX-Tensor-Shape: 1,784\r\nContent-Length: 2\r\n\r\n{}",
    b"PUT /u HTTP/1.1\r\nhost:x\r\nA:\r\nB:  spaced value \t\r\nC: \x80\xff\r\nContent-Length: 1\r\n\r\nz",
    b"DELETE /d HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    b"OPTIONS /o#frag HTTP/1.1\r\nContent-Length: 007\r\n\r\n1234567",
    b"PATCH /odd\"<>{}|^`~ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(70)) + b"\r\n",  # past the C's header count
]
#: left to httptools (each alone at the start of a stream): the C parser must take none of them
OTHER = [
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
    b"GET / HTTP/1.1\r\nProxy-Connection: close\r\n\r\n",
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /h2 HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length: 1 \r\n\r\nx",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: \x7f\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"FOO / HTTP/1.1\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"GET http://x/y HTTP/1.1\r\n\r\n",
    b"GET /\x80 HTTP/1.1\r\n\r\n",
    b"GET /a\tb HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.2\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # incomplete head
    post(b"/p", b"0123456789")[:-1],  # incomplete body
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello
]


def _run(stream: bytes, cuts: list[int], native: bool, monkeypatch: pytest.MonkeyPatch, **limits: int) -> tuple:
    monkeypatch.setattr(reader_mod, "_http", NATIVE if native else None)
    proto, tr, app, _ = make(**limits)
    points = sorted({c for c in cuts if 0 < c < len(stream)} | {0, len(stream)})
    for a, b in zip(points, points[1:]):
        proto.data_received(stream[a:b])
    seen = [(r.method, r.url, r.path, r.headers, r.body, r.keep_alive, r.error) for r in app.requests]
    return re.sub(rb"date: [^\r]*\r\n", b"", tr.data), tr.closed, seen


def _same(stream: bytes, monkeypatch: pytest.MonkeyPatch, cuts: list[int] = (), **limits: int) -> tuple:
    native = _run(stream, list(cuts), True, monkeypatch, **limits)
    pure = _run(stream, list(cuts), False, monkeypatch, **limits)
    assert native == pure
    return native


@needs_native
@pytest.mark.parametrize("first", PLAIN + OTHER)
@pytest.mark.parametrize("second", [b"", GET, OTHER[5]])
def test_both_paths_answer_the_same_whole_and_split_at_every_byte(first: bytes, second: bytes,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stream = GET + first + second
    whole = _same(stream, monkeypatch)
    assert whole[2][0][1] == b"/a?b=1"
    for cut in range(1, len(stream)):  # what is sent may depend on the split (a 100 Continue), what is seen not
        assert _same(stream, monkeypatch, [cut])[1:] == whole[1:], cut


@needs_native
def test_pipelined_plain_requests_one_byte_per_read_and_in_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = b"".join(PLAIN) + b"\r\n" + b"".join(PLAIN)  # an empty line between requests is skipped
    whole = _same(stream, monkeypatch)
    assert len(whole[2]) == 2 * len(PLAIN) and not whole[1]
    assert _same(stream, monkeypatch, list(range(len(stream)))) == whole


@needs_native
def test_the_c_parser_takes_the_plain_requests_and_builds_what_httptools_would() -> None:
    stream = b"".join(PLAIN)
    requests, end = NATIVE.parse(stream, 0, Request, 2.5, 16384, 65536, 1 << 20, 100)
    assert end == len(stream) - len(PLAIN[-1]) and len(requests) == len(PLAIN) - 1  # 70 headers: left
    put = requests[4]
    assert (put.method, put.url, put.body, put.keep_alive, put.error, put.t_begin) == (b"PUT", b"/u", b"z", True, None, 2.5)
    assert put.headers == {b"host": b"x", b"a": b"", b"b": b"spaced value \t", b"c": b"\x80\xff", b"content-length": b"1"}
    assert requests[6].headers == {b"x-dup": b"2"} and requests[7].body == b"1234567"
    assert requests[0].path == b"/a" and requests[7].url == b"/o#frag"
    # `start` and `max_count`: where it begins, how many it takes at most
    requests, end = NATIVE.parse(b"xx" + GET * 3, 2, Request, 0.0, 100, 1000, 1000, 2)
    assert len(requests) == 2 and end == 2 + 2 * len(GET)


@needs_native
@pytest.mark.parametrize("other", OTHER)
def test_the_c_parser_leaves_everything_else_where_it_starts(other: bytes) -> None:
    requests, end = NATIVE.parse(GET + other, 0, Request, 0.0, 16384, 65536, 1 << 20, 100)
    assert len(requests) == 1 and end == len(GET)


AT_LIMIT = b"POST /abcd HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n123456789"  # 51 bytes of head


@needs_native
@pytest.mark.parametrize("limit, over, refused", [
    ({"max_url_bytes": 5}, b"GET /abcde HTTP/1.1\r\n\r\n", 414),
    # the reader counts the target and (name + value + 4) per header: 5 + 9 + 19 = 33 for AT_LIMIT; the
    # C also wants the raw head (51 bytes) within the limit
    ({"max_header_bytes": 51}, b"GET /abcd HTTP/1.1\r\nHost: " + b"x" * 40 + b"\r\n\r\n", 431),
    ({"max_body_bytes": 9}, b"POST /abcd HTTP/1.1\r\nContent-Length: 10\r\n\r\n1234567890", 413),
])
def test_a_request_over_a_limit_is_refused_the_same_and_one_at_the_limit_taken(
        limit: dict[str, int], over: bytes, refused: int, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"max_url_bytes": 100, "max_header_bytes": 1000, "max_body_bytes": 1000, **limit}
    for cut in range(len(AT_LIMIT + over) + 1):
        data, closed, seen = _same(AT_LIMIT + over, monkeypatch, [cut], **limits)
        statuses = [s for s, _, _ in responses(data)]
        assert statuses == [200, refused] and closed, (cut, statuses)
        assert seen[0][4] == b"123456789"
    taken, end = NATIVE.parse(AT_LIMIT + over, 0, Request, 0.0, limits["max_url_bytes"],
                              limits["max_header_bytes"], limits["max_body_bytes"], 10)
    assert len(taken) == 1 and end == len(AT_LIMIT)
    tighter = {k: v - 1 if k in limit else v for k, v in limits.items()}
    assert NATIVE.parse(AT_LIMIT, 0, Request, 0.0, tighter["max_url_bytes"], tighter["max_header_bytes"],
                        tighter["max_body_bytes"], 10) == ([], 0)


@needs_native
def test_a_read_of_many_plain_requests_stops_at_the_pipeline_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_mod, "_http", NATIVE)
    proto, tr, app, _ = make(defer=True)
    proto.data_received(GET * (3 * PIPELINE_HIGH))
    assert len(proto.queue) == PIPELINE_HIGH  # one dispatched, the next PIPELINE_HIGH queued; the rest kept
    assert tr.paused and len(proto.reader.rest.data) == len(GET) * (2 * PIPELINE_HIGH - 1)
    while app.pending:
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", b"ok")
    assert len(responses(tr.data)) == 3 * PIPELINE_HIGH and not tr.paused


@needs_native
@pytest.mark.parametrize("stream", PLAIN[:-1])
def test_a_request_built_in_c_has_every_slot_as_init_sets_it(stream: bytes) -> None:
    (built,), _ = NATIVE.parse(stream, 0, Request, 1.25, 16384, 65536, 1 << 20, 1)
    made = Request(built.method, built.url, built.headers, built.body, True, None, 1.25)
    for name in Request.__slots__:
        if name != "t_parsed":
            assert getattr(built, name) == getattr(made, name), name
    assert made.t_parsed - 1.0 < built.t_parsed <= made.t_parsed  # the same clock, time.monotonic()
    assert (built.path is built.url) == (b"?" not in built.url)


@needs_native
def test_the_c_parser_keeps_no_reference_it_does_not_own() -> None:
    import sys

    stream = b"GET /a?b HTTP/1.1\r\nA:\r\n\r\n" + post(b"/p", b"")
    watched = (b"", True, None)

    def parse_many(n: int) -> list[int]:
        for _ in range(n):
            requests, end = NATIVE.parse(stream, 0, Request, 0.5, 100, 1000, 1000, 10)
            assert len(requests) == 2 and end == len(stream)
            del requests
        return [sys.getrefcount(o) for o in watched]

    assert parse_many(1000) == parse_many(1)


@needs_native
def test_the_c_parser_builds_only_the_request_class_it_was_configured_with() -> None:
    class Other:
        __slots__ = ("method",)

    with pytest.raises(ValueError, match="not the Request"):
        NATIVE.configure(Other)
    with pytest.raises(TypeError, match="configured"):
        NATIVE.parse(GET, 0, Other, 0.0, 100, 1000, 1000, 1)
    assert len(NATIVE.parse(GET, 0, Request, 0.0, 100, 1000, 1000, 1)[0]) == 1  # still configured


@needs_native
@pytest.mark.parametrize("size", [0, 1, 9, 10, 99, 100, 12345, 1 << 20])
def test_the_response_built_in_c_is_the_joined_one(size: int) -> None:
    import numpy as np

    from shmserve.http import protocol

    pieces = [b"HTTP/1.1 200 OK\r\ncontent-length: ", b"x-a: 1\r\n", b"x-request-id: r\r\n", b"\r\n", b"b" * size]
    want = protocol._response_py(*pieces)
    assert want == pieces[0] + b"%d\r\n" % size + b"".join(pieces[1:])
    assert NATIVE.response(*pieces) == want
    assert protocol._response is NATIVE.response
    # what an application may hand as a body: any bytes-like object
    for body in (memoryview(pieces[4]), bytearray(pieces[4]), np.frombuffer(pieces[4], dtype=np.uint8)):
        assert NATIVE.response(*pieces[:4], body) == protocol._response_py(*pieces[:4], body)
    with pytest.raises(TypeError):
        NATIVE.response(*pieces[:4], "text")


@needs_native
def test_take_queues_counts_and_pauses_as_the_reader_does() -> None:
    from collections import deque
    from types import SimpleNamespace

    paused: list[bool] = []
    reader = SimpleNamespace(queue=deque(), completed=3, conn=SimpleNamespace(pause_reading=lambda: paused.append(True)))
    limits = (100, 1000, 4)
    stream = GET * 2 + post(b"/p", b"12345")  # the last one is over max_body_bytes: left where it starts
    assert NATIVE.take(stream, 1.5, reader.queue, limits, reader) == 2 * len(GET)
    assert [r.t_begin for r in reader.queue] == [1.5, 1.5] and reader.completed == 5 and not paused
    # at most as many as bring the queue one past PIPELINE_HIGH (one at least); then reading pauses
    reader.queue.extend([None] * (PIPELINE_HIGH - 3))
    assert NATIVE.take(GET * 3, 0.0, reader.queue, limits, reader) == 2 * len(GET)
    assert len(reader.queue) == PIPELINE_HIGH + 1 and paused == [True] and reader.completed == 7
    assert NATIVE.take(GET * 3, 0.0, reader.queue, limits, reader) == len(GET) and paused == [True, True]
