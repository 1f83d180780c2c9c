"""Graceful shutdown's cut-off, byte by byte: what was in the socket buffer when it began is served,
what the peer sent after is not, however the reads split the bytes, and a connection accepted while
stopping follows the same rule."""
from __future__ import annotations

import socket

from shmserve.http.protocol import HttpProtocol, ServerState
from tests.unit.test_http_protocol import FakeTransport, RecordingApp, responses

A = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
B = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
LATE = b"GET /c HTTP/1.1\r\n\r\n"  # shorter than A + B: it would fit a cut-off that forgot the reads


def test_the_cut_off_counts_every_read_after_shutdown_began() -> None:
    ours, peer = socket.socketpair()
    try:
        app, state = RecordingApp(), ServerState()
        proto, tr = HttpProtocol(app, state), FakeTransport()
        tr.socket = ours
        proto.connection_made(tr)
        peer.sendall(A + B)
        state.begin_shutdown()  # A and B are in the kernel: both are to be served
        peer.sendall(LATE)  # sent after: not taken
        proto.data_received(ours.recv(len(A)))
        proto.data_received(ours.recv(len(B)))
        if not tr.closed:
            proto.data_received(ours.recv(4096))
        got = responses(tr.data)
        assert [b for _, _, b in got] == [b"GET /a ", b"GET /b "]
        assert [h.get(b"connection") for _, h, _ in got] == [None, b"close"] and tr.closed
    finally:
        ours.close()
        peer.close()


def test_a_connection_accepted_while_stopping_is_served_what_it_sent_then_closed() -> None:
    ours, peer = socket.socketpair()
    try:
        app, state = RecordingApp(), ServerState()
        state.begin_shutdown()
        peer.sendall(A)  # sent before it was accepted: in the kernel when the protocol starts
        proto, tr = HttpProtocol(app, state), FakeTransport()
        tr.socket = ours
        proto.connection_made(tr)
        assert not tr.closed
        proto.data_received(ours.recv(4096))
        (_, headers, body), = responses(tr.data)
        assert body == b"GET /a " and headers[b"connection"] == b"close" and tr.closed
    finally:
        ours.close()
        peer.close()


def test_a_connection_accepted_while_stopping_with_nothing_sent_is_closed_at_once() -> None:
    app, state = RecordingApp(), ServerState()
    state.begin_shutdown()
    proto, tr = HttpProtocol(app, state), FakeTransport()
    proto.connection_made(tr)
    assert tr.closed and tr.data == b""
