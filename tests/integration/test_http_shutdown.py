"""Graceful shutdown under load, for each way a server is stopped: nothing already sent is dropped.

Each test starts its own server in a process group of its own, puts requests
on several kept-alive connections (a slow one in flight, runner calls
pipelined behind it), sends the signal, then checks that new connections are
refused while the slow requests are still running, and that every request sent
before the signal was answered, the last one on each connection with
``connection: close``. The runner calls behind the slow ones run during the
drain, so a runner worker that stopped on the group's SIGTERM fails them.
"""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import orjson
import pytest

from tests.integration.test_http_lifecycle import _in_flight
from tests.integration.test_http_serve import Server, read_response, request, wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = 6
SLOW_S = 2.0


def _refused(port: int) -> bool:
    """True once a new connection to `port` is turned away at once; False while one still gets in.

    Turned away is ECONNREFUSED, or ECONNRESET: a handshake that the kernel completed
    just as the last listening socket closed is reset with the rest of its accept
    queue, and ``create_connection`` reports that reset when it lands before it reads
    the socket's error. Neither is queued. A timeout (a SYN dropped while the
    listener closed) tells nothing yet: the next probe decides.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False
    return False


@pytest.mark.parametrize("how", ["SIGTERM to the supervisor", "SIGTERM to the process group",
                                 "SIGINT to the process group"])
def test_shutdown_under_load_answers_every_request_already_sent(tmp_path: Path, how: str) -> None:
    srv = Server(tmp_path, api_workers=2, own_group=True)
    slow = request("POST", "/wait", orjson.dumps({"seconds": SLOW_S}), {"Content-Type": "application/json"})
    fast = request("POST", "/predict", b"[[1, 2, 3]]", {"Content-Type": "application/json"})
    sig = signal.SIGINT if "SIGINT" in how else signal.SIGTERM
    conns = [srv.connect() for _ in range(CONNECTIONS)]
    try:
        for sock in conns:
            sock.sendall(slow + fast + fast)
        wait_until(lambda: _in_flight(srv) >= CONNECTIONS, 10, "every slow request to be in flight")
        if "group" in how:
            os.killpg(srv.proc.pid, sig)
        else:
            srv.proc.send_signal(sig)
        # The slow requests are still running: new connections must be refused now, not queued.
        wait_until(lambda: _refused(srv.port), SLOW_S * 0.75, "new connections to be refused")
        for sock in conns:
            buf = bytearray()
            got = [read_response(sock, buf) for _ in range(3)]
            assert [(s, orjson.loads(b)) for s, _, b in got] == [(200, "waited"), (200, [[2, 4, 6]]), (200, [[2, 4, 6]])]
            assert got[-1][1].get("connection") == "close"
            assert sock.recv(1) == b""  # closed after the last answer
    finally:
        for sock in conns:
            sock.close()
        code = srv.stop(sig)
    assert code == 0, srv.log()
