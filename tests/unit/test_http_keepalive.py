"""The keep-alive timeout of `HttpProtocol`, counted in `ServerState.tick` periods (no clock needed)."""
from __future__ import annotations

import pytest

from shmserve.http.state import TICK_S
from tests.unit.test_http_protocol import make, post

TIMEOUT_S = 2.0
TICKS = round(TIMEOUT_S / TICK_S)


def _tick(state, n: int) -> None:
    for _ in range(n):
        state.tick(now=0.0)  # a fixed time: only the keep-alive count moves, no deadline fires


def test_an_idle_connection_stays_open_for_the_whole_timeout_and_closes_one_tick_later() -> None:
    assert TICKS >= 2
    proto, tr, app, state = make(keepalive_timeout=TIMEOUT_S)
    proto.data_received(post(b"/a", b""))
    # A tick may come right after the connection went idle: after TICKS ticks it may have been
    # idle for only (TICKS - 1) * TICK_S, so it must still be open ...
    _tick(state, TICKS)
    assert not tr.closed, f"closed after {TICKS} ticks, before {TIMEOUT_S} s of idleness is certain"
    # ... and after one more it has been idle for at least the timeout.
    _tick(state, 1)
    assert tr.closed


def test_a_request_restarts_the_idle_count() -> None:
    proto, tr, app, state = make(keepalive_timeout=TIMEOUT_S)
    _tick(state, TICKS)
    proto.data_received(post(b"/a", b""))  # answered at once: idle again
    _tick(state, TICKS)
    assert not tr.closed
    _tick(state, 1)
    assert tr.closed


def test_the_idle_count_starts_when_a_slow_answer_is_sent() -> None:
    proto, tr, app, state = make(defer=True, keepalive_timeout=TIMEOUT_S)
    proto.data_received(post(b"/slow", b""))
    _tick(state, 3 * TICKS)  # busy: never idle
    _, conn = app.pending.pop(0)
    conn.reply(200, b"text/plain", b"done")
    _tick(state, TICKS)
    assert not tr.closed
    _tick(state, 1)
    assert tr.closed


@pytest.mark.parametrize("partial", [b"GET /a HTTP/1.1\r\nHost: x\r\n", b"POST /a HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"])
def test_a_request_still_arriving_is_not_cut_by_the_keep_alive_timeout(partial: bytes) -> None:
    # Its own header or body deadline governs it (408), not keep-alive.
    proto, tr, app, state = make(keepalive_timeout=TIMEOUT_S)
    proto.data_received(partial)
    _tick(state, 3 * TICKS)
    assert not tr.closed


@pytest.mark.parametrize("timeout", [0.25, 0.7, 1.2, 2.0, 3.3])
def test_a_timeout_between_ticks_is_never_cut_short(timeout: float) -> None:
    # After n ticks a connection has surely been idle only (n - 1) ticks: it may close at the first
    # tick where that covers the timeout, and no later.
    due = next(n for n in range(1, 100) if (n - 1) * TICK_S >= timeout)
    proto, tr, app, state = make(keepalive_timeout=timeout)
    proto.data_received(post(b"/a", b""))
    _tick(state, due - 1)
    assert not tr.closed, f"closed after {due - 1} ticks: idle for perhaps {(due - 2) * TICK_S} s < {timeout} s"
    _tick(state, 1)
    assert tr.closed
