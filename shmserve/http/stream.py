"""Streamed API responses: an API that returns an async iterator (or is an async generator).

Each item is encoded by the API's output descriptor and written as soon as it
is produced: as one chunk of a ``Transfer-Encoding: chunked`` response, or, when
the request's ``Accept`` names ``text/event-stream``, as one server-sent event
(``data: <item>`` lines, a blank line after each). The head goes out with the
first item, so an API that fails before yielding still gets a normal error
response; a failure after that closes the connection without the final chunk,
which a client sees as a truncated body. A client that disconnects cancels the
task, and the iterator is closed: a runner stream behind it stops its generator.

A streamed response is reported once, when it ends, to the server's
``on_response`` hook (the access log line and the spans), with the status it
ended with (the one sent; the error's for a stream that failed mid-way, which
its client sees as a truncated body; 499 when the client left mid-stream), the
body bytes sent (what the chunks carried, event framing included) and its whole
duration. One that failed before its head went out is reported by its error
response instead.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import Executor
from typing import Any, Protocol

from ..context import Context
from ..errors import ShmserveError
from ..io import IODescriptor
from ..local import iterate_on
from ..service import API
from .metrics import Metrics
from .protocol import HttpProtocol, Request


class App(Protocol):
    """What a streamed answer needs of `shmserve.http.app.App` (named here, not imported: no cycle)."""

    metrics: Metrics
    executor: Executor | None

    def _fail(self, conn: HttpProtocol, api: API, start: float, status: int, exc: BaseException) -> None: ...

log = logging.getLogger("shmserve.http")

_CT_SSE = b"text/event-stream"
_PAUSED_POLL_S = 0.005


def is_stream(value: Any) -> bool:
    """An API result to stream: an async iterator, or a (sync) generator."""
    return hasattr(value, "__aiter__") or inspect.isgenerator(value)


class Sent:
    """What a streamed response sent: whether its head went out, and its body bytes so far."""

    __slots__ = ("started", "bytes")

    def __init__(self) -> None:
        self.started = False
        self.bytes = 0


async def respond_stream(app: App, api: API, items: Any, request: Request, conn: HttpProtocol, start: float,
                         ctx: Context | None) -> None:
    """Answer a request whose API returned `items` (see `is_stream`) with a streamed response."""
    try:
        status, extra = ctx.response.render() if ctx is not None else (200, b"")
    except ValueError as exc:  # a bad header or cookie the API set
        app._fail(conn, api, start, 500, exc)
        return
    sent = Sent()
    try:
        status = await send_stream(conn, api.name, api.output, items, request.headers.get(b"accept", b""),
                                   status, extra, app.executor, sent)
    except asyncio.CancelledError:
        app.metrics.observe_request(api.name, 499, time.perf_counter() - start)
        _report(conn, request, 499, sent)
        raise
    app.metrics.observe_request(api.name, status, time.perf_counter() - start)
    _report(conn, request, status, sent)


def _report(conn: HttpProtocol, request: Request, status: int, sent: Sent) -> None:
    """The one ``on_response`` call of a stream whose head went out (an error reply made its own)."""
    hook = conn.state.on_response
    if hook is not None and sent.started:
        hook(conn, request, status, sent.bytes)


async def send_stream(conn: HttpProtocol, api_name: str, output: IODescriptor, items: Any, accept: bytes,
                      status: int, extra_headers: bytes, executor: Executor | None, sent: Sent | None = None) -> int:
    """Write `items` as a streamed response; returns the status it ended with (`status`, or the error's).

    `sent`, when given, is kept up to date with what went out (`Sent`).
    """
    sse = _CT_SSE in accept
    source = items.__aiter__() if hasattr(items, "__aiter__") else iterate_on(items, executor)
    if sent is None:
        sent = Sent()
    try:
        async for item in source:
            ctype, body, _extra = output.encode(item, b"" if sse else accept)
            if not sent.started:
                conn.start_stream(status, _CT_SSE if sse else ctype,
                                  extra_headers + (b"cache-control: no-cache\r\n" if sse else b""))
                sent.started = True
            chunk = _event(body) if sse else body
            conn.send_chunk(chunk)
            sent.bytes += len(chunk)
            while conn.writing_paused:  # a slow reader: produce no more until it reads (send_timeout resets it)
                await asyncio.sleep(_PAUSED_POLL_S)
        if not sent.started:  # nothing was yielded: an empty body
            conn.start_stream(status, _CT_SSE if sse else output.response_media_types[0].encode()
                              if output.response_media_types else b"application/octet-stream", extra_headers)
            sent.started = True
        conn.end_stream()
        return status
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("API %r: its stream failed", api_name)
        failed = exc.http_status if isinstance(exc, ShmserveError) else 500
        if sent.started:
            conn.close()  # the status line is gone: a truncated body is the only signal left
        else:
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            conn.reply_error(failed, type(exc).__name__, message or type(exc).__name__)
        return failed
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


def _event(body: bytes) -> bytes:
    """One server-sent event carrying `body` (a data line per line of it)."""
    return b"".join(b"data: %s\n" % line for line in body.split(b"\n")) + b"\n"
