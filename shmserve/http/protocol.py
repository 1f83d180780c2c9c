"""HTTP/1.1 over asyncio with httptools: one `HttpProtocol` object per connection.

The protocol parses requests, queues pipelined ones, and hands them one at a
time to the application's ``dispatch(request, connection)``; the application
answers with `HttpProtocol.reply` (at once, or later from a task), which
writes the whole response with a single ``transport.write``. Answering one
request at a time per connection is what keeps pipelined responses in order.

Handled here: keep-alive (HTTP/1.1 default, HTTP/1.0 on request), pipelining,
chunked request bodies, ``Expect: 100-continue``, malformed requests (400,
then close), oversized headers (431) and bodies (413: the body is not read,
the connection closes), idle keep-alive timeout, and back-pressure (reading
pauses while the peer does not read our responses or too many pipelined
requests are queued).
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

import httptools
import orjson

__all__ = ["Request", "HttpProtocol", "ServerState", "Application", "error_body"]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE_HIGH = 32  # queued requests before we stop reading
_PIPELINE_LOW = 4


class Request:
    """One parsed HTTP request. Header names are lower-cased bytes."""

    __slots__ = ("method", "path", "url", "headers", "body", "keep_alive", "error", "t_begin", "t_parsed")

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

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.url.decode('latin-1')} {len(self.body)} bytes>"


class Application(Protocol):
    """What the protocol calls: answer `request` through ``conn.reply(...)``, now or later."""

    def dispatch(self, request: Request, conn: "HttpProtocol") -> None: ...


def error_body(status: int, error: str, message: str) -> bytes:
    """The JSON body of every error response."""
    return orjson.dumps({"status": status, "error": error, "message": message})


class ServerState:
    """What every connection of one server shares: limits, the Date header, live connections."""

    def __init__(
        self,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        keepalive_timeout: float = 5.0,
    ) -> None:
        self.max_body_bytes = int(max_body_bytes)
        self.max_header_bytes = int(max_header_bytes)
        self.keepalive_ticks = max(1, int(round(keepalive_timeout)))
        self.connections: set[HttpProtocol] = set()
        self.shutting_down = False
        self.date_line = b""
        self._prefixes: dict[tuple[int, bytes], bytes] = {}
        self.update_date()

    def update_date(self) -> None:
        """Refresh the cached ``date:`` header line (called once a second)."""
        self.date_line = b"date: " + formatdate(time.time(), usegmt=True).encode() + b"\r\n"

    def prefix(self, status: int, content_type: bytes) -> bytes:
        """Status line plus content-type line, built once per (status, type)."""
        key = (status, content_type)
        head = self._prefixes.get(key)
        if head is None:
            try:
                phrase = HTTPStatus(status).phrase
            except ValueError:
                phrase = "Status"
            head = b"HTTP/1.1 %d %s\r\nserver: shmserve\r\ncontent-type: %s\r\n" % (status, phrase.encode(), content_type)
            if len(self._prefixes) < 1024:
                self._prefixes[key] = head
        return head

    def tick(self) -> None:
        """Once a second: refresh the Date header and close keep-alive connections idle too long."""
        self.update_date()
        limit = self.keepalive_ticks
        for conn in list(self.connections):
            if conn.idle():
                conn.idle_ticks += 1
                if conn.idle_ticks > limit:
                    conn.close()

    def begin_shutdown(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their current response."""
        self.shutting_down = True
        for conn in list(self.connections):
            if conn.idle() and not conn.has_partial_request():
                conn.close()


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
        self._discard = False  # after a fatal error: parse nothing more
        self._dispatching = False
        self._reading_paused = False
        self._writing_paused = False
        self._continue_wanted = False
        self._in_message = False
        # The message being parsed.
        self._t_begin = 0.0
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: Any = None
        self._body_len = 0
        self._header_len = 0
        self._rejected = False

    # -- asyncio callbacks -----------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        """Remember the transport and join the server's connection set."""
        self.transport = transport
        self.state.connections.add(self)

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
        try:
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
        if not self.busy:
            self._drain()

    def pause_writing(self) -> None:
        """The peer is not reading: stop reading its next requests."""
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        """The peer reads again: resume reading unless the pipeline is full."""
        self._writing_paused = False
        if len(self.queue) < _PIPELINE_LOW:
            self._resume_reading()

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        """httptools: a new request starts."""
        self._t_begin = time.monotonic()
        self._in_message = True
        self._url = b""
        self._headers = {}
        self._body = None
        self._body_len = 0
        self._header_len = 0
        self._rejected = False

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target."""
        self._url = self._url + url if self._url else url
        self._header_len += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header; names are stored lower-cased."""
        self._header_len += len(name) + len(value)
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        """httptools: check limits, answer ``Expect: 100-continue``."""
        if self._discard:
            return
        state = self.state
        headers = self._headers
        if self._header_len > state.max_header_bytes:
            self._reject(431, f"request headers exceed {state.max_header_bytes} bytes")
            return
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
        self._continue_wanted = False
        if self._rejected or self._discard:
            return
        body = self._body
        if body is None:
            body = b""
        elif isinstance(body, list):
            body = b"".join(body)
        parser = self.parser
        self.queue.append(Request(parser.get_method(), self._url, self._headers, body, parser.should_keep_alive(),
                                  None, self._t_begin))
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
        keep_alive = request is not None and request.keep_alive and not state.shutting_down
        self.transport.write(b"".join((
            state.prefix(status, content_type),
            b"content-length: %d\r\n" % len(body),
            extra_headers,
            state.date_line,
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
            body,
        )))
        if not keep_alive:
            self.close()
        elif not self._dispatching:
            self._drain()

    def reply_error(self, status: int, error: str, message: str, extra_headers: bytes = b"") -> None:
        """Send a JSON error body (see `error_body`)."""
        self.reply(status, b"application/json", error_body(status, error, message), extra_headers)

    def close(self) -> None:
        """Close the connection; a pending write is flushed first."""
        if not self.closed:
            self.closed = True
            self._discard = True
            self.transport.close()

    def idle(self) -> bool:
        """True when no request is being served or waiting."""
        return not self.busy and not self.queue

    def has_partial_request(self) -> bool:
        """True while a request's headers or body are still arriving."""
        return self._in_message

    # -- internals -------------------------------------------------------------
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
        if self.state.shutting_down and not self.queue and not self._in_message:
            self.close()

    def _reject(self, status: int, message: str) -> None:
        # Answer in order, after earlier pipelined requests, then close: the rest is not read.
        self._rejected = True
        self.queue.append(Request(b"", self._url, self._headers, b"", False, (status, message)))
        self._stop_parsing()

    def _fail(self, status: int, message: str) -> None:
        self.queue.append(Request(b"", b"", {}, b"", False, (status, message)))
        self._stop_parsing()

    def _stop_parsing(self) -> None:
        self._discard = True
        self._in_message = False
        self._pause_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._discard and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()


ProtocolFactory = Callable[[], HttpProtocol]
