"""Graceful shutdown with a request half received: it is finished and answered, never cut.

The rule (`ServerState.begin_shutdown`): every request received when shutdown begins is served,
including the one still arriving; only the last answer carries ``connection: close``. A request
that never completes gets its header or body timeout's 408, so shutdown cannot be held open.
"""
from __future__ import annotations

import time

import pytest

from tests.unit.test_http_protocol import make, post, responses

HALF_BODY = b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc"
HALF_HEAD = b"POST /2 HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("half, rest", [(HALF_BODY, b"def"), (HALF_HEAD, b"Content-Length: 6\r\n\r\nabcdef")])
def test_a_request_half_received_behind_one_in_flight_is_finished_and_answered(half: bytes, rest: bytes) -> None:
    proto, tr, app, state = make(defer=True)
    proto.data_received(post(b"/1", b"one") + half)
    state.begin_shutdown()
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"first")
    assert not tr.closed, "shutdown closed a connection whose next request was half received"
    (_, headers, _), = responses(tr.data)
    assert b"connection" not in headers  # more is coming on this connection: not the last answer
    proto.data_received(rest)
    req, conn = app.pending.pop(0)
    assert req.path == b"/2" and req.body == b"abcdef"
    conn.reply(200, b"text/plain", b"second")
    got = responses(tr.data)
    assert [b for _, _, b in got] == [b"first", b"second"]
    assert got[1][1][b"connection"] == b"close" and tr.closed


def test_a_queued_request_and_a_half_received_one_are_both_served_in_order() -> None:
    proto, tr, app, state = make(defer=True)
    proto.data_received(post(b"/1", b"a") + post(b"/2", b"b") + HALF_BODY.replace(b"/2", b"/3"))
    state.begin_shutdown()
    for body in (b"r1", b"r2"):
        _, conn = app.pending.pop(0)
        conn.reply(200, b"text/plain", body)
        assert not tr.closed
    proto.data_received(b"def")
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"r3")
    got = responses(tr.data)
    assert [b for _, _, b in got] == [b"r1", b"r2", b"r3"]
    assert [h.get(b"connection") for _, h, _ in got] == [None, None, b"close"] and tr.closed


def test_a_half_received_request_that_never_completes_gets_408_at_its_deadline() -> None:
    proto, tr, app, state = make(body_timeout=5.0)
    before = time.monotonic()
    proto.data_received(HALF_BODY)  # the body is due 5 s after its headers arrived
    after = time.monotonic()
    state.begin_shutdown()
    assert not tr.closed
    state.tick(now=before + 5.0 - 0.01)  # fake times around the deadline: nothing sleeps
    assert not tr.closed
    state.tick(now=after + 5.0 + 0.01)
    (status, headers, _), = responses(tr.data)
    assert status == 408 and headers[b"connection"] == b"close" and tr.closed
    assert not app.requests
