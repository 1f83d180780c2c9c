"""`ServerState`: what every connection of one HTTP server shares — limits, deadlines, the Date header.

The limits and timeouts follow the servers people trust: nginx's
``client_header_timeout``, ``client_body_timeout``, ``send_timeout`` and
``large_client_header_buffers``, uvicorn's ``h11_max_incomplete_event_size`` and
``limit_concurrency``. They are enforced while bytes arrive, not after, so a
client that trickles a request line, headers or a body, or that stops reading
its responses, costs a bounded amount of memory and time:

=====================  =========================================================
``max_url_bytes``      request target longer than this: 414 at once, close
``max_header_bytes``   request line plus headers larger than this: 431 at once
``max_body_bytes``     body larger than this: 413, the body is not read
``header_timeout``     seconds from a request's first byte to its last header: 408
``body_timeout``       seconds from the last header to the body's last byte: 408
``send_timeout``       seconds a response may sit unread by the peer: connection aborted
``keepalive_timeout``  seconds an idle keep-alive connection stays open
``max_connections``    open connections per server; the next one gets 503 and close
=====================  =========================================================

Deadlines are checked by `ServerState.tick` every `TICK_S` seconds, so a
connection is closed at most `TICK_S` after its deadline; the hot path only
stores a time per request.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

from .request import Request

__all__ = ["ServerState", "Connection", "TICK_S"]

#: period of `ServerState.tick`: Date header refresh and every deadline check
TICK_S = 0.5


class Connection(Protocol):
    """What the server's tick and shutdown ask of each connection (`shmserve.http.protocol.HttpProtocol`)."""

    idle_ticks: int
    #: the task serving the connection's current request (cancelled when the server stops)
    task: Any

    def check_deadlines(self, now: float) -> bool: ...

    def idle(self) -> bool: ...

    def has_partial_request(self) -> bool: ...

    def close(self) -> None: ...

    def begin_shutdown(self) -> None: ...


class ServerState:
    """What every connection of one server shares: limits, the Date header, live connections.

    See the module docstring for what each limit does.
    """

    def __init__(
        self,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        keepalive_timeout: float = 5.0,
        max_url_bytes: int = 16 * 1024,
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        send_timeout: float = 30.0,
        max_connections: int = 1000,
    ) -> None:
        self.max_body_bytes = int(max_body_bytes)
        self.max_header_bytes = int(max_header_bytes)
        self.max_url_bytes = int(max_url_bytes)
        # Rounded up: a connection closes only once it has surely been idle for the whole timeout
        # (a tick may come right after it went idle), at most two ticks after.
        self.keepalive_ticks = max(1, math.ceil(keepalive_timeout / TICK_S - 1e-9))
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.send_timeout = float(send_timeout)
        self.max_connections = int(max_connections)
        self.connections: set[Connection] = set()
        #: connections refused because `max_connections` were open (for metrics and logs)
        self.refused = 0
        #: connections closed by a header, body or send deadline
        self.timed_out = 0
        self.shutting_down = False
        #: called as ``on_response(conn, request, status, body_bytes)`` after each response is
        #: written (the access log and tracing use it); None costs one check per response
        self.on_response: Callable[[Any, Request, int, int], None] | None = None
        #: called as ``identify(request)`` on a request the protocol answers itself (400, 408, 413,
        #: 414, 431, 503 when full): gives it its request ID, as the application gives the others
        self.identify: Callable[[Request], None] | None = None
        #: the ``date:`` line; and it followed by the end of the head, without and with ``connection: close``
        self.date_line = self.date_end = self.date_close = b""
        self._prefixes: dict[tuple[int, bytes], bytes] = {}
        self._heads: dict[tuple[int, bytes], bytes] = {}
        self.update_date()

    def update_date(self) -> None:
        """Refresh the cached ``date:`` header line."""
        self.date_line = date = b"date: " + formatdate(time.time(), usegmt=True).encode() + b"\r\n"
        self.date_end = date + b"\r\n"
        self.date_close = date + b"connection: close\r\n\r\n"

    def prefix(self, status: int, content_type: bytes) -> bytes:
        """Status line, server and content-type lines, built once per (status, type)."""
        key = (status, content_type)
        prefix = self._prefixes.get(key)
        if prefix is None:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Status"
            prefix = b"HTTP/1.1 %d %s\r\nserver: shmserve\r\ncontent-type: %s\r\n" % (status, phrase.encode(), content_type)
            if len(self._prefixes) < 1024:
                self._prefixes[key] = prefix
        return prefix

    def head(self, status: int, content_type: bytes) -> bytes:
        """`prefix` followed by ``content-length: `` (the value comes next), built once per (status, type):
        every response but its length, extra headers and date repeats it."""
        key = (status, content_type)
        head = self._heads.get(key)
        if head is None:
            head = self.prefix(status, content_type) + b"content-length: "
            if len(self._heads) < 1024:
                self._heads[key] = head
        return head

    def tick(self, now: float | None = None) -> None:
        """Every `TICK_S`: refresh the Date header, enforce deadlines, close idle keep-alive connections.

        `now` is a CLOCK_MONOTONIC time (tests pass their own).
        """
        self.update_date()
        if now is None:
            now = time.monotonic()
        limit = self.keepalive_ticks
        for conn in list(self.connections):
            if conn.check_deadlines(now):
                self.timed_out += 1
                continue
            if conn.idle() and not conn.has_partial_request():
                conn.idle_ticks += 1
                if conn.idle_ticks > limit:
                    conn.close()

    def begin_shutdown(self) -> None:
        """Stop keep-alive: connections with nothing to serve close now, the others after their last response.

        What is served is what was received when this is called: requests
        queued, the one arriving, and the bytes already in the kernel's socket
        buffer (``FIONREAD``), which are read and answered. A request that
        begins after those bytes is not taken: the answer before it carried
        ``connection: close``, which tells its client to send it again elsewhere.
        """
        self.shutting_down = True
        for conn in list(self.connections):
            conn.begin_shutdown()
