"""HTTP/1.1 over asyncio with httptools: one `HttpProtocol` object per connection.

The connection's `shmserve.http.reader.RequestReader` parses requests and
queues them; the protocol hands them one at a time to the application's
``dispatch(request, connection)``; the application answers with
`HttpProtocol.reply` (at once, or later from a task), which writes the whole
response with a single ``transport.write``. Answering one request at a time per
connection is what keeps pipelined responses in order.

Handled here: keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelining,
chunked request bodies, ``Expect: 100-continue``, malformed requests (400,
then close), and back-pressure (reading pauses while the peer does not read
our responses or too many pipelined requests are queued). The limits and
deadlines of `shmserve.http.state` are enforced as bytes arrive: a request
target over the limit gets 414 and headers over the limit 431 at once, a body
over the limit 413 (not read), a request whose headers or body do not arrive
in time 408; each then closes the connection. A connection over
``max_connections`` gets 503 before anything is read.

Graceful shutdown (`ServerState.begin_shutdown`) answers every request already
received: the one being served, the pipelined ones queued behind it, and those
still in the socket buffer (``FIONREAD`` tells); the last response carries
``connection: close``.
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

from .. import _native
from .reader import CONTINUE, RequestReader
from .request import Request, error_body
from .state import ServerState

__all__ = ["Request", "HttpProtocol", "ServerState", "Application", "error_body"]

_PIPELINE_LOW = 4  # queued requests below which a connection paused by a full pipeline reads again
# Sent to a connection over `max_connections` before closing it; nothing of it is read.
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nserver: shmserve\r\ncontent-type: application/json\r\n"
         b"retry-after: 1\r\n%sconnection: close\r\ncontent-length: %d\r\n\r\n%s")




def _response_py(head: bytes, extra: bytes, response_headers: bytes, end: bytes, body: bytes) -> bytes:
    """One response's bytes: `head` (up to ``content-length: ``), the body's length, the other lines, `body`."""
    return b"".join((head, b"%d\r\n" % len(body), extra, response_headers, end, body))


_native_http = _native.load("http")
#: `_response_py`, in one C call when the accelerator is built (shmserve/_native/http.c)
_response = _response_py if _native_http is None else _native_http.response


class Application(Protocol):
    """What the protocol calls: answer `request` through ``conn.reply(...)``, now or later."""

    def dispatch(self, request: Request, conn: "HttpProtocol") -> None: ...


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection. See the module docstring."""

    def __init__(self, app: Application, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.transport: Any = None
        self.queue: deque[Request] = deque()
        self.reader = RequestReader(self, state, self.queue)
        self.busy = False
        self.current: Request | None = None
        #: the task serving `current`, set by the application so a disconnect can cancel it (an asyncio.Task,
        #: or the RequestTask of shmserve/_native/task.c: both have cancel() and done())
        self.task: Any = None
        self.closed = False
        self.idle_ticks = 0
        self._dispatching = False
        self._stream_keep_alive = False  # of the chunked response being streamed, if any
        self._reading_paused = False
        self._writing_paused = False
        #: when the peer stopped reading (writes paused) or we closed with data unsent (0: never)
        self._stuck_since = 0.0

    # -- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        """Remember the transport and join the server's connection set, or refuse when it is full."""
        self.transport = transport
        state = self.state
        if len(state.connections) >= state.max_connections:
            _refuse_over_limit(self)
            return
        state.connections.add(self)
        if state.shutting_down:  # taken from the backlog while stopping: serve what it has sent
            self.begin_shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop queued requests and cancel the one being served."""
        self.closed = True
        self.state.connections.discard(self)
        self.queue.clear()
        task, self.task = self.task, None
        if task is not None:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        """Parse `data`; serve whatever complete requests it finished."""
        reader = self.reader
        if reader.discard:
            return
        self.idle_ticks = 0
        reader.feed(data)
        if not self.busy:
            self._drain()

    def pause_writing(self) -> None:
        """The peer is not reading: stop reading its next requests."""
        self._writing_paused = True
        self._stuck_since = time.monotonic()
        self.pause_reading()

    def resume_writing(self) -> None:
        """The peer reads again: serve what is queued, resume reading unless the pipeline is full."""
        self._writing_paused = False
        self._stuck_since = 0.0
        if self.queue and not self.busy:
            self._drain()
        if len(self.queue) < _PIPELINE_LOW:
            self._resume_reading()

    # -- answering -------------------------------------------------------------
    def reply(self, status: int, content_type: bytes, body: bytes, extra_headers: bytes = b"") -> None:
        """Send the response to the current request (one write), then serve the next queued one.

        `extra_headers` is zero or more complete ``name: value\\r\\n`` lines.
        """
        request = self.current
        self.current = None
        self.task = None
        self.busy = False
        if self.closed:
            return
        state = self.state
        keep_alive = request is not None and request.keep_alive
        if keep_alive and state.shutting_down:
            keep_alive = self._more_to_serve()  # the last answer of a draining connection says close
        head = state._heads.get((status, content_type))  # the built head, without a call (hot path)
        self.transport.write(_response(head or state.head(status, content_type), extra_headers,
                                       request.response_headers if request is not None else b"",
                                       state.date_end if keep_alive else state.date_close, body))
        hook = state.on_response
        if hook is not None and request is not None:
            hook(self, request, status, len(body))
        if not keep_alive:
            self.close()
        elif not self._dispatching and (self.queue or self._reading_paused or state.shutting_down
                                        or self.reader.continue_wanted):
            self._drain()  # only when there is something for it to do: most replies leave nothing queued

    def start_stream(self, status: int, content_type: bytes, extra_headers: bytes = b"") -> None:
        """Send the head of a chunked response to the current request; then `send_chunk`, `end_stream`."""
        if self.closed:
            return
        state = self.state
        request = self.current
        self._stream_keep_alive = request is not None and request.keep_alive and not state.shutting_down
        self.transport.write(b"".join((
            state.prefix(status, content_type),
            b"transfer-encoding: chunked\r\n",
            extra_headers,
            request.response_headers if request is not None else b"",
            state.date_end if self._stream_keep_alive else state.date_close,
        )))

    @property
    def writing_paused(self) -> bool:
        """True while the peer does not read what was sent (the transport's buffer is over its limit)."""
        return self._writing_paused and not self.closed

    def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a streamed response body, at once."""
        if data and not self.closed:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        """Finish the chunked response, then serve the next queued request (or close)."""
        self.current = None
        self.task = None
        self.busy = False
        if self.closed:
            return
        self.transport.write(b"0\r\n\r\n")
        if not self._stream_keep_alive:
            self.close()
        elif not self._dispatching:
            self._drain()

    def reply_error(self, status: int, error: str, message: str, extra_headers: bytes = b"") -> None:
        """Send a JSON error body (see `error_body`)."""
        request = self.current
        rid = request.request_id if request is not None else b""
        self.reply(status, b"application/json", error_body(status, error, message, rid), extra_headers)

    def close(self) -> None:
        """Close the connection; a pending write is flushed first (for at most ``send_timeout``)."""
        if not self.closed:
            self.closed = True
            self.reader.discard = True
            if not self._stuck_since and self.transport.get_write_buffer_size():
                self._stuck_since = time.monotonic()
            self.transport.close()

    def idle(self) -> bool:
        """True when no request is being served or waiting."""
        return not self.busy and not self.queue

    def has_partial_request(self) -> bool:
        """True while a request's headers or body are still arriving."""
        return self.reader.in_message

    def check_deadlines(self, now: float) -> bool:
        """Enforce the header, body and send deadlines at time `now`; True if this closed the connection."""
        stuck = self._stuck_since
        reader = self.reader
        if stuck and now - stuck > self.state.send_timeout:
            # The peer has not read our bytes for send_timeout: nothing more can reach it. Reset
            # (SO_LINGER 0, as nginx's reset_timedout_connection) so the kernel drops the unsent
            # bytes now too, instead of keeping them, and the peer learns at once.
            self.closed = reader.discard = True
            _reset(self.transport)
            return True
        deadline = reader.deadline
        if not deadline or now <= deadline or reader.discard:
            return False
        if self._reading_paused and not self._writing_paused:
            reader.deadline = now + 1.0  # we stopped reading (pipeline full): the peer is not late
            return False
        if reader.in_head:
            what, limit, key = "headers", self.state.header_timeout, "header"
        else:
            what, limit, key = "body", self.state.body_timeout, "body"
        reader.reject(408, f"request {what} did not arrive within {limit:g} s; send the whole request "
                           f"promptly or raise api_server.http.{key}_timeout (--{key}-timeout)")
        if not self.busy:
            self._drain()
        return True

    def begin_shutdown(self) -> None:
        """Graceful shutdown: serve what was received so far, then close (see `ServerState.begin_shutdown`)."""
        reader = self.reader
        reader.quota = _unread_bytes(self.transport) + len(reader.rest.data)  # the kept rest was received too
        reader.cutoff = reader.quota == 0
        if self.closed or self.busy or self._more_to_serve():
            return
        self.close()

    reading_paused = property(lambda self: self._reading_paused, doc="True while reading is paused (`pause_reading`).")

    def pause_reading(self) -> None:
        """Stop reading from the socket (a full pipeline, a peer that does not read, or nothing more to parse)."""
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- internals -------------------------------------------------------------
    def _more_to_serve(self) -> bool:
        """A request queued, arriving, or received before shutdown and not read yet."""
        reader = self.reader
        return bool(self.queue) or reader.in_message or (not reader.discard and not reader.cutoff)

    def _drain(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self.queue
            app = self.app
            # Not while the peer does not read (its answers would pile up here), but for a refusal (and close).
            while not self.busy and queue and not self.closed and (not self._writing_paused or queue[0].error):
                request = queue.popleft()
                self.busy = True
                self.current = request
                if request.error is not None:
                    status, message = request.error
                    if self.state.identify is not None:
                        self.state.identify(request)  # the caller's X-Request-ID, if its headers came
                    self.reply_error(status, HTTPStatus(status).phrase, message)
                else:
                    app.dispatch(request, self)
        finally:
            self._dispatching = False
        if self.closed or self.busy:
            return
        reader = self.reader
        if reader.continue_wanted:
            reader.continue_wanted = False
            self.transport.write(CONTINUE)
        if self._reading_paused and not self._writing_paused and len(self.queue) < _PIPELINE_LOW:
            self._resume_reading()
        if self.state.shutting_down and not self._more_to_serve():
            self.close()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.reader.discard and not self.closed:
            self._reading_paused = False
            if self.reader.rest.resume():  # False: the rest of the last read is parsed first, on a later loop turn
                self.transport.resume_reading()


def _refuse_over_limit(conn: HttpProtocol) -> None:
    """Answer 503 to a connection over ``max_connections`` and close it, reading nothing of it."""
    state = conn.state
    state.refused += 1
    message = (f"this API worker has {state.max_connections} connections open; retry later "
               "or raise api_server.http.max_connections (--max-connections)")
    refused = Request(b"", b"", {}, b"", False, (503, message))
    if state.identify is not None:
        state.identify(refused)  # its ID, as every answer has (header and body), and its log line
    body = error_body(503, "TooManyConnections", message, refused.request_id)
    conn.closed = conn.reader.discard = True
    conn.transport.write(_BUSY % (refused.response_headers, len(body), body))
    conn.transport.close()
    if state.on_response is not None:
        state.on_response(conn, refused, 503, len(body))


def _reset(transport: Any) -> None:
    """Abort the connection with a reset: SO_LINGER 0 makes the kernel drop its unsent bytes too."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _unread_bytes(transport: Any) -> int:
    """Bytes the kernel holds for us to read on `transport`'s socket (0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except (OSError, ValueError):
        return 0
    return buf[0]


ProtocolFactory = Callable[[], HttpProtocol]
