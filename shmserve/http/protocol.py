"""HTTP/1.1 over asyncio with httptools: one `HttpProtocol` object per connection.

The protocol parses requests, queues pipelined ones, and hands them one at a
time to the application's ``dispatch(request, connection)``; the application
answers with `HttpProtocol.reply` (at once, or later from a task), which
writes the whole response with a single ``transport.write``. Answering one
request at a time per connection is what keeps pipelined responses in order.

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

import httptools
import orjson

from .state import ServerState

__all__ = ["Request", "HttpProtocol", "ServerState", "Application", "error_body"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE_HIGH = 32  # queued requests before we stop reading
_PIPELINE_LOW = 4
# Sent to a connection over `max_connections` before closing it; nothing of it is read.
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nserver: shmserve\r\ncontent-type: application/json\r\n"
         b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s")


class Request:
    """One parsed HTTP request. Header names are lower-cased bytes."""

    __slots__ = ("method", "path", "url", "headers", "body", "keep_alive", "error", "t_begin", "t_parsed",
                 "request_id", "response_headers", "ctx")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        error: tuple[int, str] | None = None,
        t_begin: float = 0.0,
    ) -> None:
        self.method = method
        #: CLOCK_MONOTONIC times: first byte of the request parsed, request complete.
        self.t_begin = t_begin
        self.t_parsed = time.monotonic()
        self.url = url
        q = url.find(b"?")
        self.path = url if q < 0 else url[:q]
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        #: ``(status, message)`` when the protocol already decided the answer (413, 400, 431).
        self.error = error
        #: set by the application: the request's ID (error bodies carry it), header lines added to
        #: every response to this request, and its own per-request state
        self.request_id = b""
        self.response_headers = b""
        self.ctx: Any = None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.url.decode('latin-1')} {len(self.body)} bytes>"


class Application(Protocol):
    """What the protocol calls: answer `request` through ``conn.reply(...)``, now or later."""

    def dispatch(self, request: Request, conn: "HttpProtocol") -> None: ...


def error_body(status: int, error: str, message: str, request_id: bytes = b"") -> bytes:
    """The JSON body of every error response (with ``request_id`` once the application gave one)."""
    if request_id:
        return orjson.dumps({"status": status, "error": error, "message": message,
                             "request_id": request_id.decode("latin-1")})
    return orjson.dumps({"status": status, "error": error, "message": message})


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection. See the module docstring."""

    def __init__(self, app: Application, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.queue: deque[Request] = deque()
        self.busy = False
        self.current: Request | None = None
        #: the task serving `current`, set by the application so a disconnect can cancel it
        self.task: asyncio.Future[Any] | None = None
        self.closed = False
        self.idle_ticks = 0
        #: requests fully received on this connection
        self.completed = 0
        self._discard = False  # after a fatal error: parse nothing more
        self._dispatching = False
        self._stream_keep_alive = False  # of the chunked response being streamed, if any
        self._reading_paused = False
        self._writing_paused = False
        self._continue_wanted = False
        self._in_message = False
        self._in_head = False  # request line and headers still arriving
        #: CLOCK_MONOTONIC time by which the current head or body must be complete (0: none)
        self._deadline = 0.0
        #: when the peer stopped reading (writes paused) or we closed with data unsent (0: never)
        self._stuck_since = 0.0
        # Shutdown: bytes the kernel had received when it began (still to be served), and whether
        # they are all fed (then a request that begins later is not taken: its sender was too late).
        self._quota = 0
        self._cutoff = False
        # The message being parsed.
        self._t_begin = 0.0
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: dict[bytes, bytes] = {}
        self._body: Any = None
        self._body_len = 0
        self._head_len = 0  # request target plus complete headers, counted exactly
        self._head_fed = 0  # bytes fed while the head was incomplete (an upper bound on its size)
        self._rejected = False

    # -- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        """Remember the transport and join the server's connection set, or refuse when it is full."""
        self.transport = transport
        state = self.state
        if len(state.connections) >= state.max_connections:
            state.refused += 1
            body = error_body(503, "TooManyConnections",
                              f"this API worker has {state.max_connections} connections open; retry later "
                              "or raise api_server.http.max_connections (--max-connections)")
            self.closed = self._discard = True
            transport.write(_BUSY % (len(body), body))
            transport.close()
            return
        state.connections.add(self)
        if state.shutting_down:  # taken from the backlog while stopping: serve what it has sent
            self.begin_shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop queued requests and cancel the one being served."""
        self.closed = True
        self.state.connections.discard(self)
        self.queue.clear()
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()

    def data_received(self, data: bytes) -> None:
        """Parse `data`; serve whatever complete requests it finished."""
        if self._discard:
            return
        self.idle_ticks = 0
        head_before = self._in_head
        began_at_start = not self._in_message
        completed = self.completed
        try:
            if self.state.shutting_down and not self._cutoff and len(data) >= self._quota:
                # The first `quota` bytes were received before shutdown began: serve what they
                # begin; after them, only the request already arriving is completed.
                self.parser.feed_data(data[:self._quota])
                self._cutoff = True
                if len(data) > self._quota and not self._discard:
                    self.parser.feed_data(data[self._quota:])
            else:
                if self.state.shutting_down:
                    self._quota -= len(data)
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (h2c, websocket) are not offered: the request is served as
            # plain HTTP/1.1 and the connection closes after it, since whatever
            # the client sends next belongs to the protocol it asked for.
            self._stop_parsing()
            if self.queue:
                self.queue[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
        if self._in_head and not self._discard:
            # httptools keeps a partial header inside itself and reports it only once it is
            # complete, so its size is counted here, from the bytes fed. When this chunk also
            # ended an earlier request, where the new head starts in it is unknown: it is counted
            # from the next chunk on (the head may then exceed the limit by one read).
            if head_before or (began_at_start and completed == self.completed):
                self._head_fed += len(data)
            if self._head_fed > self.state.max_header_bytes:
                self._reject_head()
        if not self.busy:
            self._drain()

    def pause_writing(self) -> None:
        """The peer is not reading: stop reading its next requests."""
        self._writing_paused = True
        self._stuck_since = time.monotonic()
        self._pause_reading()

    def resume_writing(self) -> None:
        """The peer reads again: resume reading unless the pipeline is full."""
        self._writing_paused = False
        self._stuck_since = 0.0
        if len(self.queue) < _PIPELINE_LOW:
            self._resume_reading()

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        """httptools: a new request starts; its headers must arrive within ``header_timeout``."""
        if self._cutoff:
            self._discard = True  # began after shutdown: not taken, the connection closes after earlier answers
            return
        self._t_begin = time.monotonic()
        self._deadline = self._t_begin + self.state.header_timeout
        self._in_message = True
        self._in_head = True
        self._url = []
        self._url_len = 0
        self._headers = {}
        self._body = None
        self._body_len = 0
        self._head_len = 0
        self._head_fed = 0
        self._rejected = False

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target; refused with 414 once it grows over the limit."""
        if self._rejected or self._discard:
            return
        self._url.append(url)  # a list, joined once: a trickled URL must not be re-copied per read
        self._url_len += len(url)
        self._head_len += len(url)
        if self._url_len > self.state.max_url_bytes:
            self._reject(414, f"request target exceeds {self.state.max_url_bytes} bytes; "
                              "send the data in the body or raise api_server.http.max_url_size")

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header; names are stored lower-cased."""
        if self._discard:
            return
        self._head_len += len(name) + len(value) + 4
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        """httptools: check limits, start the body deadline, answer ``Expect: 100-continue``."""
        self._in_head = False
        if self._discard:
            return
        state = self.state
        if self._head_len > state.max_header_bytes:
            self._reject_head()
            return
        self._deadline = time.monotonic() + state.body_timeout
        headers = self._headers
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            if n > state.max_body_bytes:
                self._reject(413, f"request body of {n} bytes exceeds the limit of {state.max_body_bytes} bytes; "
                                  "send a smaller body or raise --max-body-size")
                return
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            if self.busy or self.queue:
                self._continue_wanted = True  # sent once earlier responses are out, to keep order
            else:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        """httptools: a body chunk (already de-chunked); enforce the size limit."""
        if self._rejected or self._discard:
            return
        self._body_len += len(body)
        if self._body_len > self.state.max_body_bytes:
            self._reject(413, f"request body exceeds the limit of {self.state.max_body_bytes} bytes; "
                              "send a smaller body or raise --max-body-size")
            return
        current = self._body
        if current is None:
            self._body = body
        elif isinstance(current, list):
            current.append(body)
        else:
            self._body = [current, body]

    def on_message_complete(self) -> None:
        """httptools: the request is complete; queue it."""
        self._in_message = False
        self._in_head = False
        self._deadline = 0.0
        self._continue_wanted = False
        self.completed += 1
        if self._rejected or self._discard:
            return
        body = self._body
        if body is None:
            body = b""
        elif isinstance(body, list):
            body = b"".join(body)
        parser = self.parser
        self.queue.append(Request(parser.get_method(), self._joined_url(), self._headers, body,
                                  parser.should_keep_alive(), None, self._t_begin))
        if len(self.queue) > _PIPELINE_HIGH:
            self._pause_reading()

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
        self.transport.write(b"".join((
            state.prefix(status, content_type),
            b"content-length: %d\r\n" % len(body),
            extra_headers,
            request.response_headers if request is not None else b"",
            state.date_line,
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
            body,
        )))
        hook = state.on_response
        if hook is not None and request is not None:
            hook(self, request, status, len(body))
        if not keep_alive:
            self.close()
        elif not self._dispatching:
            self._drain()

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
            state.date_line,
            b"\r\n" if self._stream_keep_alive else b"connection: close\r\n\r\n",
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
            self._discard = True
            if not self._stuck_since and self.transport.get_write_buffer_size():
                self._stuck_since = time.monotonic()
            self.transport.close()

    def idle(self) -> bool:
        """True when no request is being served or waiting."""
        return not self.busy and not self.queue

    def has_partial_request(self) -> bool:
        """True while a request's headers or body are still arriving."""
        return self._in_message

    def check_deadlines(self, now: float) -> bool:
        """Enforce the header, body and send deadlines at time `now`; True if this closed the connection."""
        stuck = self._stuck_since
        if stuck and now - stuck > self.state.send_timeout:
            # The peer has not read our bytes for send_timeout: nothing more can reach it. Reset
            # (SO_LINGER 0, as nginx's reset_timedout_connection) so the kernel drops the unsent
            # bytes now too, instead of keeping them, and the peer learns at once.
            self.closed = self._discard = True
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            self.transport.abort()
            return True
        deadline = self._deadline
        if not deadline or now <= deadline or self._discard:
            return False
        if self._reading_paused and not self._writing_paused:
            self._deadline = now + 1.0  # we stopped reading (pipeline full): the peer is not late
            return False
        if self._in_head:
            what, limit, key = "headers", self.state.header_timeout, "header"
        else:
            what, limit, key = "body", self.state.body_timeout, "body"
        self._reject(408, f"request {what} did not arrive within {limit:g} s; send the whole request "
                          f"promptly or raise api_server.http.{key}_timeout (--{key}-timeout)")
        if not self.busy:
            self._drain()
        return True

    def begin_shutdown(self) -> None:
        """Graceful shutdown: serve what was received so far, then close (see `ServerState.begin_shutdown`)."""
        self._quota = _unread_bytes(self.transport)
        self._cutoff = self._quota == 0
        if self.closed or self.busy or self._more_to_serve():
            return
        self.close()

    # -- internals -------------------------------------------------------------
    def _more_to_serve(self) -> bool:
        """A request queued, arriving, or received before shutdown and not read yet."""
        return bool(self.queue) or self._in_message or (not self._discard and not self._cutoff)

    def _joined_url(self) -> bytes:
        parts = self._url
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _drain(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            queue = self.queue
            while not self.busy and queue and not self.closed:
                request = queue.popleft()
                self.busy = True
                self.current = request
                if request.error is not None:
                    status, message = request.error
                    self.reply_error(status, HTTPStatus(status).phrase, message)
                else:
                    self.app.dispatch(request, self)
        finally:
            self._dispatching = False
        if self.closed or self.busy:
            return
        if self._continue_wanted:
            self._continue_wanted = False
            self.transport.write(_CONTINUE)
        if self._reading_paused and not self._writing_paused and len(self.queue) < _PIPELINE_LOW:
            self._resume_reading()
        if self.state.shutting_down and not self._more_to_serve():
            self.close()

    def _reject(self, status: int, message: str) -> None:
        # Answer in order, after earlier pipelined requests, then close: the rest is not read.
        self._rejected = True
        self.queue.append(Request(b"", self._joined_url() if self._url else b"", self._headers, b"", False,
                                  (status, message)))
        self._stop_parsing()

    def _reject_head(self) -> None:
        self._reject(431, f"request line and headers exceed {self.state.max_header_bytes} bytes; "
                          "send less in headers or raise api_server.http.max_header_size")

    def _fail(self, status: int, message: str) -> None:
        self.queue.append(Request(b"", b"", {}, b"", False, (status, message)))
        self._stop_parsing()

    def _stop_parsing(self) -> None:
        self._discard = True
        self._in_message = False
        self._in_head = False
        self._deadline = 0.0
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._discard and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()


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
