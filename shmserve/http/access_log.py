"""The access log: one line per request, formatted and written by a background thread.

On the event loop a response costs one tuple put on a `queue.SimpleQueue`
(well under a microsecond); a `logging.handlers.QueueListener` thread turns
the tuples into lines and hands them to the server's log handlers. So the
loop never waits on a write, and a slow terminal or disk slows only the log.

Fields: client address, method, path, status, request body bytes, response
body bytes, duration (first byte of the request parsed to the response
written), runner time (summed round trips of the request's runner calls) and
the request ID. ``format: json`` writes one JSON object per line (and nothing
else on it, so log shippers can parse it); ``text`` one readable line.

``sample_rate`` below 1 logs that fraction of requests; a request slower than
``slow_ms``, and any server error (5xx), is always logged.
"""
from __future__ import annotations

import logging
import queue
import random
import sys
import time
from logging.handlers import QueueListener
from typing import Any

import orjson

from ..config.schema import AccessLogSettings

__all__ = ["AccessLog", "LOGGER_NAME"]

LOGGER_NAME = "shmserve.access"

# One queued entry: (wall time, client, method, path, status, bytes in, bytes out, seconds, runner seconds, id)
Entry = tuple[float, str, bytes, bytes, int, int, int, float, float, bytes]


def _text(e: Entry) -> str:
    ts, client, method, path, status, n_in, n_out, seconds, runner_s, rid = e
    return (f'{client} "{method.decode("latin-1")} {path.decode("latin-1")}" {status} in={n_in} out={n_out} '
            f"{seconds * 1e3:.3f}ms runner={runner_s * 1e3:.3f}ms id={rid.decode('latin-1')}")


def _json(e: Entry) -> str:
    ts, client, method, path, status, n_in, n_out, seconds, runner_s, rid = e
    return orjson.dumps({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z",
        "client": client, "method": method.decode("latin-1"), "path": path.decode("latin-1"), "status": status,
        "bytes_in": n_in, "bytes_out": n_out, "duration_ms": round(seconds * 1e3, 3),
        "runner_ms": round(runner_s * 1e3, 3), "request_id": rid.decode("latin-1"),
    }).decode()


class _Listener(QueueListener):
    """Turns queued entries into log records on the listener thread."""

    def __init__(self, q: queue.SimpleQueue[Any], fmt: Any, handlers: list[logging.Handler]) -> None:
        super().__init__(q, *handlers, respect_handler_level=True)  # type: ignore[arg-type]
        self._fmt = fmt

    def prepare(self, record: Any) -> logging.LogRecord:
        """Build the log record of one entry (called on the listener thread)."""
        rec = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, self._fmt(record), None, None)
        rec.created = record[0]
        rec.msecs = (record[0] % 1) * 1000.0
        return rec


def _server_handlers(fmt_json: bool) -> list[logging.Handler]:
    """The server's log: the root logger's handlers (JSON lines get their own, message-only formatter)."""
    handlers = list(logging.getLogger().handlers) or [logging.StreamHandler(sys.stderr)]
    if not fmt_json:
        return handlers
    plain: list[logging.Handler] = []
    for h in handlers:
        stream = getattr(h, "stream", None)
        out = logging.StreamHandler(stream) if stream is not None else h
        if stream is not None:
            out.setFormatter(logging.Formatter("%(message)s"))
        plain.append(out)
    return plain


class AccessLog:
    """The access log of one API worker; `start()` before serving, `stop()` flushes it."""

    def __init__(self, settings: AccessLogSettings, handlers: list[logging.Handler] | None = None) -> None:
        self.settings = settings
        self._rate = settings.sample_rate
        self._slow_s = settings.slow_ms / 1000.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        is_json = settings.format == "json"
        self._listener = _Listener(self._queue, _json if is_json else _text,
                                   handlers if handlers is not None else _server_handlers(is_json))
        self._started = False

    def start(self) -> None:
        """Start the writer thread."""
        if not self._started:
            self._listener.start()
            self._started = True

    def stop(self) -> None:
        """Write every queued line, then stop the writer thread."""
        if self._started:
            self._listener.stop()
            self._started = False

    def record(self, conn: Any, request: Any, status: int, body_bytes: int, runner_s: float) -> None:
        """Queue the line of one response (on the event loop; cheap)."""
        t0 = request.t_begin or request.t_parsed
        seconds = time.monotonic() - t0
        if self._rate < 1.0 and status < 500 and seconds < self._slow_s and random.random() >= self._rate:
            return
        peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
        self._queue.put((time.time(), client, request.method or b"-", request.path or b"-", status,
                         len(request.body), body_bytes, seconds, runner_s, request.request_id or b"-"))
