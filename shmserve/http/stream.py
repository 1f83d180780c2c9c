"""Streamed API responses: an API that returns an async iterator (or is an async generator).

Each item is encoded by the API's output descriptor and written as soon as it
is produced: as one chunk of a ``Transfer-Encoding: chunked`` response, or, when
the request's ``Accept`` names ``text/event-stream``, as one server-sent event
(``data: <item>`` lines, a blank line after each). The head goes out with the
first item, so an API that fails before yielding still gets a normal error
response; a failure after that closes the connection without the final chunk,
which a client sees as a truncated body. A client that disconnects cancels the
task, and the iterator is closed: a runner stream behind it stops its generator.
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


async def respond_stream(app: App, api: API, items: Any, request: Request, conn: HttpProtocol, start: float,
                         ctx: Context | None) -> None:
    """Answer a request whose API returned `items` (see `is_stream`) with a streamed response."""
    try:
        status, extra = ctx.response.render() if ctx is not None else (200, b"")
    except ValueError as exc:  # a bad header or cookie the API set
        app._fail(conn, api, start, 500, exc)
        return
    try:
        status = await send_stream(conn, api.name, api.output, items, request.headers.get(b"accept", b""),
                                   status, extra, app.executor)
    except asyncio.CancelledError:
        app.metrics.observe_request(api.name, 499, time.perf_counter() - start)
        raise
    app.metrics.observe_request(api.name, status, time.perf_counter() - start)


async def send_stream(conn: HttpProtocol, api_name: str, output: IODescriptor, items: Any, accept: bytes,
                      status: int, extra_headers: bytes, executor: Executor | None) -> int:
    """Write `items` as a streamed response; returns the status it ended with (`status`, or the error's)."""
    sse = _CT_SSE in accept
    source = items.__aiter__() if hasattr(items, "__aiter__") else iterate_on(items, executor)
    started = False
    try:
        async for item in source:
            ctype, body, _extra = output.encode(item, b"" if sse else accept)
            if not started:
                conn.start_stream(status, _CT_SSE if sse else ctype,
                                  extra_headers + (b"cache-control: no-cache\r\n" if sse else b""))
                started = True
            conn.send_chunk(_event(body) if sse else body)
            while conn.writing_paused:  # a slow reader: produce no more until it reads (send_timeout resets it)
                await asyncio.sleep(_PAUSED_POLL_S)
        if not started:  # nothing was yielded: an empty body
            conn.start_stream(status, _CT_SSE if sse else output.response_media_types[0].encode()
                              if output.response_media_types else b"application/octet-stream", extra_headers)
        conn.end_stream()
        return status
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("API %r: its stream failed", api_name)
        failed = exc.http_status if isinstance(exc, ShmserveError) else 500
        if started:
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
