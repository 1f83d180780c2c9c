"""Limits, deadlines and graceful shutdown of `HttpProtocol`, with a fake transport and a fake clock."""
from __future__ import annotations

import socket
import struct
import time

from shmserve.http.protocol import HttpProtocol
from tests.unit.test_http_protocol import FakeTransport, make, post, responses


def test_a_trickled_request_target_gets_414_as_soon_as_it_is_too_long() -> None:
    proto, tr, app, _ = make(max_url_bytes=1000)
    proto.data_received(b"GET /")
    for _ in range(9):
        proto.data_received(b"a" * 100)
    assert tr.data == b"" and not tr.closed  # 901 bytes so far: still allowed
    proto.data_received(b"a" * 100)  # no end of line in sight: refused at once anyway
    (status, headers, body), = responses(tr.data)
    assert status == 414 and headers[b"connection"] == b"close" and b"max_url_size" in body
    assert tr.closed and tr.paused and not app.requests


def test_a_long_request_target_in_many_pieces_is_joined_once() -> None:
    proto, tr, app, _ = make()
    proto.data_received(b"GET /")
    for _ in range(2000):
        proto.data_received(b"ab")
    proto.data_received(b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert app.requests[0].url == b"/" + b"ab" * 2000
    assert responses(tr.data)[0][0] == 200


def test_an_unterminated_header_value_gets_431_while_it_arrives() -> None:
    proto, tr, app, _ = make(max_header_bytes=4096)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(40):
        proto.data_received(b"v" * 100)
    assert tr.data == b""
    proto.data_received(b"v" * 100)  # over 4096 bytes of head, no end of the header yet
    (status, _, body), = responses(tr.data)
    assert status == 431 and b"max_header_size" in body and tr.closed and not app.requests


def test_many_small_headers_over_the_limit_get_431() -> None:
    proto, tr, app, _ = make(max_header_bytes=1000)
    proto.data_received(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1234567890\r\n" % i for i in range(100)) + b"\r\n")
    assert responses(tr.data)[0][0] == 431 and not app.requests


def test_a_pipelined_body_ahead_of_a_partial_head_does_not_count_as_head() -> None:
    proto, tr, app, _ = make(max_header_bytes=1000)
    proto.data_received(post(b"/1", b"x" * 5000) + b"GET /2 HTTP/1.1\r\nHo")
    proto.data_received(b"st: x\r\n\r\n")
    assert [s for s, _, _ in responses(tr.data)] == [200, 200]


def test_headers_that_trickle_past_the_header_timeout_get_408() -> None:
    proto, tr, app, state = make(header_timeout=10)
    t0 = time.monotonic()
    proto.data_received(b"GET / HTTP/1.1\r\n")
    state.tick(t0 + 5)
    proto.data_received(b"X-A: 1\r\n")  # a byte now and then does not extend the deadline
    state.tick(t0 + 9)
    assert tr.data == b""
    proto.data_received(b"X-B: 2\r\n")
    state.tick(t0 + 10.5)
    (status, headers, body), = responses(tr.data)
    assert status == 408 and headers[b"connection"] == b"close" and b"headers" in body and b"header_timeout" in body
    assert tr.closed and state.timed_out == 1 and not app.requests


def test_a_body_that_trickles_past_the_body_timeout_gets_408() -> None:
    proto, tr, app, state = make(body_timeout=20)
    t0 = time.monotonic()
    proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    state.tick(t0 + 15)
    proto.data_received(b"def")
    assert tr.data == b""
    state.tick(t0 + 21)
    (status, _, body), = responses(tr.data)
    assert status == 408 and b"body" in body and b"body_timeout" in body and tr.closed


def test_a_complete_request_has_no_deadline_while_it_is_served() -> None:
    proto, tr, app, state = make(defer=True, header_timeout=1, body_timeout=1)
    proto.data_received(post(b"/slow", b"x"))
    state.tick(time.monotonic() + 100)
    assert not tr.closed and tr.data == b""


def test_a_late_pipelined_head_gets_408_after_the_answer_in_progress() -> None:
    proto, tr, app, state = make(defer=True, header_timeout=1)
    proto.data_received(post(b"/1", b"x") + b"GET /2 HTTP/1.1\r\n")
    state.tick(time.monotonic() + 5)
    assert tr.data == b""  # /1 is still being served: the 408 waits its turn
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"one")
    assert [s for s, _, _ in responses(tr.data)] == [200, 408] and tr.closed


def test_no_408_while_reading_is_paused_by_a_full_pipeline() -> None:
    proto, tr, app, state = make(defer=True, header_timeout=1)
    proto.data_received(b"".join(post(b"/%d" % i, b"") for i in range(40)) + b"GET /late HTTP/1.1\r\n")
    assert tr.paused
    state.tick(time.monotonic() + 5)
    assert not tr.closed  # the server stopped reading, not the client


def test_a_peer_that_stops_reading_is_reset_after_the_send_timeout() -> None:
    ours, peer = socket.socketpair()
    try:
        proto, tr, app, state = make(send_timeout=30)
        tr.socket = ours
        proto.data_received(post(b"/x", b""))
        proto.pause_writing()
        t0 = time.monotonic()
        state.tick(t0 + 29)
        assert not tr.aborted
        state.tick(t0 + 31)
        assert tr.aborted
        # Linger 0: the kernel drops what the peer never read, and resets the connection.
        assert struct.unpack("ii", ours.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
    finally:
        ours.close()
        peer.close()


def test_a_closed_connection_whose_last_bytes_are_never_read_is_aborted() -> None:
    proto, tr, app, state = make(send_timeout=30)
    tr.unsent = 100
    proto.data_received(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert tr.closed and not tr.aborted
    state.tick(time.monotonic() + 31)
    assert tr.aborted


def test_connections_over_max_connections_get_503_before_anything_is_read() -> None:
    proto, tr, app, state = make(max_connections=2)
    second = HttpProtocol(app, state)
    second.connection_made(FakeTransport())
    third, third_tr = HttpProtocol(app, state), FakeTransport()
    third.connection_made(third_tr)
    (status, headers, body), = responses(third_tr.data)
    assert status == 503 and headers[b"retry-after"] == b"1" and b"max_connections" in body
    assert third_tr.closed and third not in state.connections and state.refused == 1
    third.data_received(post(b"/x", b""))
    assert not app.requests
    second.connection_lost(None)  # a slot frees up: the next connection is served
    fourth, fourth_tr = HttpProtocol(app, state), FakeTransport()
    fourth.connection_made(fourth_tr)
    assert fourth in state.connections and not fourth_tr.closed


def test_shutdown_answers_every_pipelined_request_then_closes() -> None:
    proto, tr, app, state = make(defer=True)
    proto.data_received(post(b"/1", b"a") + post(b"/2", b"b") + post(b"/3", b"c"))
    state.begin_shutdown()
    while app.pending:
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", b"ok")
    got = responses(tr.data)
    assert [s for s, _, _ in got] == [200, 200, 200]
    assert [h.get(b"connection") for _, h, _ in got] == [None, None, b"close"]
    assert tr.closed


def test_shutdown_waits_for_a_request_whose_head_is_arriving() -> None:
    proto, tr, app, state = make()
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n")
    state.begin_shutdown()
    assert not tr.closed
    proto.data_received(b"\r\n")
    (status, headers, _), = responses(tr.data)
    assert status == 200 and headers[b"connection"] == b"close" and tr.closed


def test_shutdown_serves_a_request_still_in_the_socket_buffer() -> None:
    ours, peer = socket.socketpair()
    try:
        proto, tr, app, state = make()
        tr.socket = ours
        proto.data_received(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")  # answered; the connection is idle
        peer.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")  # in the kernel, not read yet
        state.begin_shutdown()
        assert not tr.closed
        proto.data_received(ours.recv(4096))
        got = responses(tr.data)
        assert [b for _, _, b in got] == [b"GET /first ", b"GET /second "]
        assert got[1][1][b"connection"] == b"close" and tr.closed
    finally:
        ours.close()
        peer.close()


def test_shutdown_closes_idle_connections_with_nothing_unread() -> None:
    ours, peer = socket.socketpair()
    try:
        proto, tr, app, state = make()
        tr.socket = ours
        proto.data_received(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        state.begin_shutdown()
        assert tr.closed
    finally:
        ours.close()
        peer.close()



def test_shutdown_does_not_take_requests_sent_after_it_began() -> None:
    ours, peer = socket.socketpair()
    try:
        proto, tr, app, state = make()
        tr.socket = ours
        before = b"GET /before HTTP/1.1\r\nHost: x\r\n\r\n"
        peer.sendall(before)
        state.begin_shutdown()
        peer.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")  # a pipelining client that keeps sending
        proto.data_received(ours.recv(4096))
        got = responses(tr.data)
        assert [b for _, _, b in got] == [b"GET /before "]
        assert got[0][1][b"connection"] == b"close" and tr.closed
    finally:
        ours.close()
        peer.close()


def test_a_request_arriving_when_shutdown_begins_is_completed() -> None:
    proto, tr, app, state = make()
    proto.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
    state.begin_shutdown()
    proto.data_received(b"cd" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    got = responses(tr.data)
    assert [b for _, _, b in got] == [b"POST /p abcd"] and got[0][1][b"connection"] == b"close" and tr.closed
