"""HttpProtocol fed with raw bytes through a fake transport: no sockets, no processes."""
from __future__ import annotations

import re

import pytest

from shmserve.http.protocol import HttpProtocol, Request, ServerState


class FakeTransport:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.paused = False
        self.unsent = 0  # bytes the peer has not read yet
        self.socket: object = None  # what get_extra_info("socket") answers

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.chunks.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return ("127.0.0.1", 40000)
        return self.socket if name == "socket" else default

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class RecordingApp:
    """Answers at once with the request body echoed, unless `defer` is set."""

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer
        self.requests: list[Request] = []
        self.pending: list[tuple[Request, HttpProtocol]] = []

    def dispatch(self, request: Request, conn: HttpProtocol) -> None:
        self.requests.append(request)
        if self.defer:
            self.pending.append((request, conn))
        else:
            conn.reply(200, b"text/plain", b"%s %s %s" % (request.method, request.path, request.body))


def make(defer: bool = False, **limits: int) -> tuple[HttpProtocol, FakeTransport, RecordingApp, ServerState]:
    app = RecordingApp(defer)
    state = ServerState(**limits)
    proto = HttpProtocol(app, state)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, app, state


def responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Split a byte stream of HTTP responses (content-length framed)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get(b"content-length", b"0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (path, len(body), extra, body)


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    proto.data_received(post(b"/b?q=1", b"hello"))
    got = responses(tr.data)
    assert [r[2] for r in got] == [b"GET /a ", b"POST /b hello"]
    assert all(b"connection" not in r[1] for r in got)
    assert not tr.closed
    assert app.requests[1].url == b"/b?q=1"


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    proto, tr, app, _ = make(defer=True)
    proto.data_received(post(b"/1", b"a") + post(b"/2", b"bb") + b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
    # Only the first is dispatched until it is answered.
    assert [r.path for r in app.requests] == [b"/1"]
    req, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"one")
    assert [r.path for r in app.requests] == [b"/1", b"/2"]
    req, conn = app.pending.pop(0)
    conn.reply(201, b"text/plain", b"two")
    req, conn = app.pending.pop(0)
    conn.reply(202, b"text/plain", b"three")
    got = responses(tr.data)
    assert [(s, b) for s, _, b in got] == [(200, b"one"), (201, b"two"), (202, b"three")]
    assert len(tr.chunks) == 3  # one write per response


def test_pipelined_requests_split_across_reads() -> None:
    proto, tr, app, _ = make()
    stream = post(b"/1", b"xyz") + post(b"/2", b"0123456789")
    for i in range(0, len(stream), 7):
        proto.data_received(stream[i:i + 7])
    assert [r[2] for r in responses(tr.data)] == [b"POST /1 xyz", b"POST /2 0123456789"]


def test_chunked_request_body_is_joined() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert not app.requests
    proto.data_received(b"6\r\n world\r\n0\r\n\r\n")
    assert app.requests[0].body == b"hello world"
    assert responses(tr.data)[0][2] == b"POST /c hello world"


def test_expect_100_continue_is_answered_before_the_body() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert tr.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.data_received(b"abc")
    assert tr.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert tr.data.endswith(b"POST /e abc")


def test_expect_100_continue_waits_for_earlier_pipelined_responses() -> None:
    proto, tr, app, _ = make(defer=True)
    proto.data_received(post(b"/1", b"a") + b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
    assert tr.data == b""  # no interim response ahead of /1's answer
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"one")
    assert tr.data.endswith(b"one" + b"HTTP/1.1 100 Continue\r\n\r\n")


def test_expect_100_continue_with_oversized_body_gets_413_not_continue() -> None:
    proto, tr, app, _ = make(max_body_bytes=10)
    proto.data_received(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert b"100 Continue" not in tr.data
    (status, headers, body), = responses(tr.data)
    assert status == 413 and headers[b"connection"] == b"close"
    assert b"max-body-size" in body
    assert tr.closed and not app.requests


def test_content_length_over_limit_is_refused_without_reading_the_body() -> None:
    proto, tr, app, _ = make(max_body_bytes=100)
    proto.data_received(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 50)
    proto.data_received(b"x" * 950)  # ignored: the connection is done
    (status, _, body), = responses(tr.data)
    assert status == 413 and b"exceeds the limit of 100 bytes" in body
    assert tr.closed and tr.paused and not app.requests


def test_chunked_body_over_limit_gets_413_mid_stream() -> None:
    proto, tr, app, _ = make(max_body_bytes=8)
    proto.data_received(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert tr.data == b""
    proto.data_received(b"5\r\nworld\r\n0\r\n\r\n")
    (status, _, _), = responses(tr.data)
    assert status == 413 and tr.closed and not app.requests


def test_413_comes_after_earlier_pipelined_answers() -> None:
    proto, tr, app, _ = make(defer=True, max_body_bytes=4)
    proto.data_received(post(b"/ok", b"1234") + post(b"/big", b"12345"))
    assert tr.data == b""
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"fine")
    assert [s for s, _, _ in responses(tr.data)] == [200, 413]
    assert tr.closed


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_http_gets_400_and_close(garbage: bytes) -> None:
    proto, tr, app, _ = make()
    proto.data_received(garbage)
    (status, headers, body), = responses(tr.data)
    assert status == 400 and headers[b"connection"] == b"close"
    assert b"malformed HTTP request" in body and headers[b"content-type"] == b"application/json"
    assert tr.closed and not app.requests


def test_malformed_request_after_a_good_one_keeps_order() -> None:
    proto, tr, app, _ = make()
    proto.data_received(post(b"/ok", b"x") + b"\x00\x01garbage\r\n\r\n")
    assert [s for s, _, _ in responses(tr.data)] == [200, 400]


def test_oversized_headers_get_431() -> None:
    proto, tr, app, _ = make(max_header_bytes=200)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n")
    (status, _, _), = responses(tr.data)
    assert status == 431 and tr.closed and not app.requests


def test_http10_closes_after_response_unless_keep_alive_asked() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"GET /x HTTP/1.0\r\n\r\n")
    (status, headers, _), = responses(tr.data)
    assert headers[b"connection"] == b"close" and tr.closed

    proto, tr, app, _ = make()
    proto.data_received(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert not tr.closed


def test_connection_close_header_is_honoured() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert responses(tr.data)[0][1][b"connection"] == b"close"
    assert tr.closed


def test_disconnect_cancels_the_running_task_and_drops_the_queue() -> None:
    class FakeTask:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    proto, tr, app, state = make(defer=True)
    proto.data_received(post(b"/1", b"a") + post(b"/2", b"b"))
    task = FakeTask()
    proto.task = task  # type: ignore[assignment]
    proto.connection_lost(None)
    assert task.cancelled and not proto.queue and proto not in state.connections
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"late")  # must not write to a closed transport
    assert tr.data == b""


def test_idle_keep_alive_connections_time_out_but_busy_ones_do_not() -> None:
    proto, tr, app, state = make(defer=True, keepalive_timeout=2)
    for _ in range(5):
        state.tick()
    assert tr.closed

    proto, tr, app, state = make(defer=True, keepalive_timeout=2)
    proto.data_received(post(b"/slow", b""))
    for _ in range(5):
        state.tick()
    assert not tr.closed


def test_shutdown_closes_after_the_in_flight_response() -> None:
    proto, tr, app, state = make(defer=True)
    idle_proto, idle_tr, _, _ = make()
    idle_proto.state = state
    state.connections.add(idle_proto)
    proto.data_received(post(b"/1", b"x"))
    state.begin_shutdown()
    assert idle_tr.closed and not tr.closed
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"done")
    (status, headers, body), = responses(tr.data)
    assert body == b"done" and headers[b"connection"] == b"close" and tr.closed


def test_too_many_pipelined_requests_pause_reading_until_drained() -> None:
    proto, tr, app, _ = make(defer=True)
    proto.data_received(b"".join(post(b"/%d" % i, b"") for i in range(40)))
    assert tr.paused
    while app.pending:
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", b"")
    assert not tr.paused
    assert len(responses(tr.data)) == 40


def test_responses_carry_date_and_content_length() -> None:
    proto, tr, app, state = make()
    proto.data_received(post(b"/x", b"abc"))
    head = tr.data.split(b"\r\n\r\n")[0]
    assert re.search(rb"\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", head)
    assert b"\r\ncontent-length: 11" in head


def test_upgrade_requests_are_served_as_plain_http_then_closed() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00binary")
    (status, headers, body), = responses(tr.data)
    assert status == 200 and body == b"GET /u " and tr.closed
