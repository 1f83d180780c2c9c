"""`RequestReader`: the receiving half of one HTTP connection — bytes in, complete `Request` objects out.

It feeds httptools, which calls back here as it parses; it enforces the
limits of `shmserve.http.state` while bytes arrive (414 for a long target,
431 for large headers, 413 for a large body: the refused request is queued
with its answer decided, and nothing after it is parsed), keeps the header
and body deadlines the connection's tick checks, and, once graceful shutdown
began, takes only what the kernel had received by then. Complete requests are
appended to the queue it shares with its `shmserve.http.protocol.HttpProtocol`.

The plain request (HTTP/1.1, keep-alive, a Content-Length body or none, no
Expect or upgrade, within the limits, complete in the read) is parsed without
httptools when the C accelerator is built: `shmserve._native` ``http`` builds
every such `Request` at the start of a read in one call, and httptools parses
the rest from the first request it did not take, which is then answered as if
httptools had parsed it all.

Otherwise a read is parsed in slices of `SLICE` bytes (a body of known length
in one), and once more than `PIPELINE_HIGH` requests are queued the rest of the
read is kept (`pending`) and reading pauses: a client that pipelines a thousand
small requests in one 64 KiB read must not hold the event loop while they are
all parsed and answered (the C parser stops there too). The protocol feeds the
kept bytes again, on a later turn of the loop (`resume`), once the queue has
drained and the peer reads its answers.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

import httptools

from .. import _native
from .request import Request
from .state import ServerState

__all__ = ["RequestReader", "Rest", "Owner", "PIPELINE_HIGH", "CONTINUE", "SLICE"]

#: queued requests before the connection stops reading (and parsing the rest of a read)
PIPELINE_HIGH = 32

#: the C parser of the plain request (shmserve/_native/http.c), or None: httptools parses everything
_http = _native.load("http")
if _http is not None:
    _http.configure(Request, PIPELINE_HIGH)  # it builds `Request` objects itself, slot by slot
_monotonic = time.monotonic
#: bytes of a read parsed at a time: bounds the requests queued past `PIPELINE_HIGH` (one read of
#: 64 KiB can hold a thousand small pipelined requests)
SLICE = 4096
_BODY_STEP = 64 * 1024  # a chunked body: its length is unknown, so it is parsed a read at a time
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Owner(Protocol):
    """What the reader needs of its connection (`shmserve.http.protocol.HttpProtocol`)."""

    busy: bool
    closed: bool
    transport: Any

    @property
    def reading_paused(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def data_received(self, data: Any) -> None: ...


class RequestReader:
    """Parses one connection's bytes into `Request` objects appended to `queue`; see the module docstring."""

    def __init__(self, conn: Owner, state: ServerState, queue: deque[Request]) -> None:
        self.conn = conn
        self.state = state
        self.queue = queue
        self.parser = httptools.HttpRequestParser(self)
        #: parse nothing more (after a fatal error, a refused request, a close, or the shutdown cut-off)
        self.discard = False
        #: requests fully received
        self.completed = 0
        self.in_message = False
        self.in_head = False  # request line and headers still arriving
        #: CLOCK_MONOTONIC time by which the current head or body must be complete (0: none)
        self.deadline = 0.0
        #: an ``Expect: 100-continue`` to answer once the earlier responses are out
        self.continue_wanted = False
        # Shutdown: bytes the kernel had received when it began (still to be served), and whether
        # they are all fed (then a request that begins later is not taken: its sender was too late).
        self.quota = 0
        self.cutoff = False
        self._now = 0.0  # when the chunk being fed arrived
        #: the unparsed rest of a read, kept while the pipeline is full (see the module docstring)
        self.rest = Rest(self)
        # what the C parser is given: the state's limits (fixed once the server runs)
        self._limits = (state.max_url_bytes, state.max_header_bytes, state.max_body_bytes)
        # The message being parsed.
        self._t_begin = 0.0
        self._url: bytes | list[bytes] = b""
        self._url_len = 0
        self._headers: dict[bytes, bytes] = {}
        self._body: bytes | list[bytes] | None = None
        self._body_len = 0
        self._body_left = -1  # body bytes still to come, when the length is known (-1: not known)
        self._head_len = 0  # request target plus complete headers, counted exactly
        self._head_fed = 0  # bytes fed while the head was incomplete (an upper bound on its size)
        self._rejected = False

    def feed(self, data: bytes | memoryview) -> None:
        """Parse `data` (one read from the socket), a slice at a time; keep the rest when the pipeline fills."""
        rest = self.rest
        if rest.data:  # not expected (reading is paused meanwhile), but keep the order if it happens
            rest.data = bytes(rest.data) + bytes(data)
            return
        # One clock read per chunk serves every request it begins (the kept rest: when it arrived).
        now = self._now = rest.at or _monotonic()
        rest.at = 0.0
        start = 0
        if _http is not None and not self.in_message and not self.state.shutting_down:
            # The plain requests at its start, built in C and queued there (the queue, the limits, the
            # count and the pause as in `on_message_complete`); httptools goes on from the first request
            # the C did not take.
            start = _http.take(data, now, self.queue, self._limits, self)
            if start == len(data):
                return
        elif len(data) <= SLICE:
            self._feed_slice(data)
            return
        size = len(data)
        queue = self.queue
        view, ended = memoryview(data), start > 0  # ended: the C took requests just before `start`
        while start < size and not self.discard:
            if len(queue) > PIPELINE_HIGH:  # reading is paused (`on_message_complete`): keep the rest
                rest.data, rest.at = view[start:], now
                return
            step = SLICE
            if self.in_message and not self.in_head:  # in a body: its known length in one go
                step += self._body_left if self._body_left >= 0 else _BODY_STEP
            self._feed_slice(view[start:start + step], ended)
            start += step
            ended = False

    def _feed_slice(self, data: bytes | memoryview, ended: bool = False) -> None:
        """Parse `data` with httptools (`ended`: an earlier request ended just before it, in the same read)."""
        head_before = self.in_head
        began_at_start = not self.in_message
        completed = self.completed
        state = self.state
        try:
            if state.shutting_down and not self.cutoff and len(data) >= self.quota:
                # The first `quota` bytes were received before shutdown began: serve what they
                # begin; after them, only the request already arriving is completed.
                self.parser.feed_data(data[:self.quota])
                self.cutoff = True
                if len(data) > self.quota and not self.discard:
                    self.parser.feed_data(data[self.quota:])
            else:
                if state.shutting_down:
                    self.quota -= len(data)
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (h2c, websocket) are not offered: the request is served as
            # plain HTTP/1.1 and the connection closes after it, since whatever
            # the client sends next belongs to the protocol it asked for.
            self.stop()
            if self.queue:
                self.queue[-1].keep_alive = False
        except httptools.HttpParserError as exc:
            self.fail(400, f"malformed HTTP request: {exc}")
        if self.in_head and not self.discard:
            # httptools keeps a partial header inside itself and reports it only once it is
            # complete, so its size is counted here, from the bytes fed. When this chunk also
            # ended an earlier request, where the new head starts in it is unknown: it is counted
            # from the next chunk on (the head may then exceed the limit by one slice).
            if head_before or (began_at_start and not ended and completed == self.completed):
                self._head_fed += len(data)
            if self._head_fed > state.max_header_bytes:
                self._reject_head()

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        """httptools: a new request starts; its headers must arrive within ``header_timeout``."""
        if self.cutoff:
            self.discard = True  # began after shutdown: not taken, the connection closes after earlier answers
            return
        self._t_begin = now = self._now
        self.deadline = now + self.state.header_timeout
        self.in_message = self.in_head = True
        self._url = b""
        self._url_len = self._head_len = self._head_fed = self._body_len = 0
        self._body_left = -1
        self._headers = {}
        self._body = None
        self._rejected = False

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target; refused with 414 once it grows over the limit."""
        if self._rejected or self.discard:
            return
        # Pieces are joined once at the end: a trickled URL must not be re-copied per read.
        current = self._url
        if not current:
            self._url = url
        elif isinstance(current, list):
            current.append(url)
        else:
            self._url = [current, url]
        self._url_len += len(url)
        self._head_len += len(url)
        if self._url_len > self.state.max_url_bytes:
            self.reject(414, f"request target exceeds {self.state.max_url_bytes} bytes; "
                             "send the data in the body or raise api_server.http.max_url_size")

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header; names are stored lower-cased."""
        if self.discard:
            return
        self._head_len += len(name) + len(value) + 4
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        """httptools: check limits, start the body deadline, answer ``Expect: 100-continue``."""
        self.in_head = False
        if self.discard:
            return
        state = self.state
        if self._head_len > state.max_header_bytes:
            self._reject_head()
            return
        self.deadline = self._now + state.body_timeout
        headers = self._headers
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1
            self._body_left = n
            if n > state.max_body_bytes:
                self.reject(413, f"request body of {n} bytes exceeds the limit of {state.max_body_bytes} bytes; "
                                 "send a smaller body or raise --max-body-size")
                return
        if b"expect" in headers and headers[b"expect"].lower() == b"100-continue":
            if self.conn.busy or self.queue:
                self.continue_wanted = True  # sent once earlier responses are out, to keep order
            else:
                self.conn.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        """httptools: a body chunk (already de-chunked); enforce the size limit."""
        if self._rejected or self.discard:
            return
        self._body_len += len(body)
        self._body_left -= len(body)
        if self._body_len > self.state.max_body_bytes:
            self.reject(413, f"request body exceeds the limit of {self.state.max_body_bytes} bytes; "
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
        self.in_message = self.in_head = False
        self.deadline = 0.0
        self.continue_wanted = False
        self.completed += 1
        if self._rejected or self.discard:
            return
        body = self._body
        if body is None:
            body = b""
        elif isinstance(body, list):
            body = b"".join(body)
        parser = self.parser
        queue = self.queue
        queue.append(Request(parser.get_method(), self._joined_url(), self._headers, body,
                             parser.should_keep_alive(), None, self._t_begin))
        if len(queue) > PIPELINE_HIGH:
            self.conn.pause_reading()

    # -- refusing --------------------------------------------------------------
    def reject(self, status: int, message: str) -> None:
        """Queue the answer `status` for the request being parsed, after the earlier ones; parse nothing more."""
        self._rejected = True
        self.queue.append(Request(b"", self._joined_url(), self._headers, b"", False, (status, message)))
        self.stop()

    def fail(self, status: int, message: str) -> None:
        """The bytes are not HTTP: queue the answer `status` and parse nothing more."""
        self.queue.append(Request(b"", b"", {}, b"", False, (status, message)))
        self.stop()

    def stop(self) -> None:
        """Parse nothing more; no deadline is pending any longer."""
        self.discard = True
        self.in_message = self.in_head = False
        self.deadline = 0.0
        self.rest.data = b""
        self.conn.pause_reading()

    def _reject_head(self) -> None:
        self.reject(431, f"request line and headers exceed {self.state.max_header_bytes} bytes; "
                         "send less in headers or raise api_server.http.max_header_size")

    def _joined_url(self) -> bytes:
        url = self._url
        return b"".join(url) if isinstance(url, list) else url


class Rest:
    """The unparsed rest of one read, kept while its connection's pipeline is full (see the module docstring)."""

    __slots__ = ("reader", "data", "at", "_scheduled")

    def __init__(self, reader: RequestReader) -> None:
        self.reader = reader
        self.data: bytes | memoryview = b""
        self.at = 0.0  # when it arrived (0 when nothing is kept)
        self._scheduled = False

    def resume(self) -> bool:
        """Reading may go on: True when nothing is kept (read from the socket again); otherwise the kept
        bytes are fed on a later turn of the event loop, so that other connections are served first."""
        if not self.data or self.reader.discard:
            self.data, self.at = b"", 0.0
            return True
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._feed)
            except RuntimeError:  # no loop running (the protocol driven by hand, as in tests): now
                self._feed()
        return False

    def _feed(self) -> None:
        self._scheduled = False
        reader = self.reader
        conn = reader.conn
        if conn.closed or reader.discard or conn.reading_paused:
            return  # closed, or paused again meanwhile (`resume` is called again then)
        data, self.data = self.data, b""
        conn.data_received(data)  # parses (keeping a rest again if the pipeline fills) and serves
        if not self.data and not conn.closed and not reader.discard and not conn.reading_paused:
            conn.transport.resume_reading()
