"""The access log: one line per request, formatted and written in batches by a background thread.

On the event loop a response costs one call of the protocol's hook,
`AccessLog.record` (in C where it is built: `_native.Recorder`), which appends
the line's ten fields to a list (well under a microsecond, no lock, no
wake-up, and no object the garbage collector tracks left behind: see `Entry`). A writer thread sleeps `FLUSH_S`
seconds, takes every waiting entry, formats them and writes the batch with
one write per handler, and sleeps again (in a server that is the observer's
writer, `shmserve.http.observe`, which builds the spans on the same turn;
`AccessLog.start` runs one of its own). So the loop never waits on a write
and never wakes a thread: waking the writer for every line (as a
``QueueHandler``/``QueueListener`` pair does) hands the GIL back and forth once
per request, which measurably cost throughput (see the README's *Operational
features* figures), and even an `Event` wait costs the writer more per turn
than a sleep. A slow terminal or disk slows only the log; lines reach it at
most `FLUSH_S` late, and at most `FLUSH_S` worth of them wait in memory.

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
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from .._native import load
from ..config.schema import AccessLogSettings
from ..traces import Sink
from .flusher import FLUSH_S, FlushThread

__all__ = ["AccessLog", "Entry", "FIELDS", "LOGGER_NAME", "FLUSH_S", "write_records"]

LOGGER_NAME = "shmserve.access"
_log = logging.getLogger("shmserve.http")
_monotonic, _random = time.monotonic, random.random  # looked up once: `record` runs for every response

#: the C twin of `_JsonLines` and of `AccessLog._record` (shmserve/_native/accesslog.c), or None
_native = load("accesslog")
if _native is not None:
    from .request import Request as _Request

    _native.configure(_Request)  # its fields are read from their slots

# One entry: (CLOCK_MONOTONIC time, client address, method, path, status, bytes in, bytes out, seconds,
# runner seconds, id); the writer adds the wall clock's offset to the monotonic time. Every field is
# a number, a byte string or a str (the client's "host:port", formatted once per connection:
# `_client_of`). The loop appends an entry's fields one by one to the queue (`list.extend` of a
# tuple that is freed at once), so a waiting entry is no object at all: the ~FLUSH_S worth of
# entries waiting for the writer add nothing to the count of tracked objects that triggers the
# collector's young collections (one tuple per entry did, and the peer's (host, port) tuple a
# second one: at 10,000 requests/s, 2,000 objects a turn, three extra young collections per 1,000
# requests; holding the request's runner traces here once kept ~4 a request).
Entry = tuple[float, str, bytes, bytes, int, int, int, float, float, bytes]
FIELDS = 10  # items of one entry in the queue

# JSON line template: formatting one line with `%` costs a quarter of building a dict and
# orjson.dumps-ing it (2 µs against 9 µs a line), and the writer holds the GIL while it formats.
# Method and path are JSON-quoted by orjson (`_Quoted`); the client address (an IP and a port)
# and the request ID (token characters only: `shmserve.http.request_id`) need no escaping.
_JSON = ('{"time":"%s.%06dZ","client":"%s","method":%s,"path":%s,"status":%d,"bytes_in":%d,'
         '"bytes_out":%d,"duration_ms":%.3f,"runner_ms":%.3f,"request_id":"%s"}')


def _client(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"


def _client_of(conn: Any) -> str:
    """`conn`'s peer as "host:port", asked of the transport once per connection and kept on `conn`.

    ``get_extra_info("peername")`` is a ``getpeername`` call and an address formatted to text each
    time under uvloop (a sixth of what the access log cost the loop per request).
    """
    client = getattr(conn, "access_client", None)
    if client is None:
        transport = conn.transport
        client = _client(transport.get_extra_info("peername") if transport is not None else None)
        try:
            conn.access_client = client
        except AttributeError:  # a connection object without a __dict__: asked again next time
            pass
    return client


def runner_seconds(sink: Sink | None) -> float:
    """Summed round trips (submit to complete) of the runner calls in `sink`."""
    total = 0.0
    for _, _, t in sink or ():
        if "complete" in t and "submit" in t:
            total += t["complete"] - t["submit"]
    return total


class _Quoted(dict):  # type: ignore[type-arg]
    """JSON string literals of byte strings, the few that recur (methods, API paths) kept: look a value up
    with ``.get`` (C, no call of Python code) and call `quote` for one not kept."""

    _KEEP = 512  # distinct values kept; a scan of random paths stops adding once it is full
    _LONGEST = 256  # longer values are quoted each time, never kept

    def quote(self, value: bytes) -> str:
        known = orjson.dumps(value.decode("latin-1")).decode()
        if len(self) < self._KEEP and len(value) <= self._LONGEST:
            self[value] = known
        return known


def _entries(items: list[Any]) -> Any:
    """The entries of the flat `items` (FIELDS each), one tuple at a time.

    Iterated, never kept: zip hands out one tuple again and again while nobody holds it, so a batch
    of N lines makes no N tracked tuples (those started young collections on either thread and were
    promoted into older generations mid-batch).
    """
    return zip(*[iter(items)] * FIELDS)


def _text(items: list[Any], wall: float) -> str:
    """The entries of `items` as readable lines, each ended by a newline."""
    return "".join([f'{client} "{method.decode("latin-1")} {path.decode("latin-1")}" {status} in={n_in} '
                    f"out={n_out} {seconds * 1e3:.3f}ms runner={runner_s * 1e3:.3f}ms id={rid.decode('latin-1')}\n"
                    for _, client, method, path, status, n_in, n_out, seconds, runner_s, rid in _entries(items)])


class _JsonLines:
    """Formats a batch of entries as JSON lines: in C (`_native`, the same text) when it is built,
    else here, the date part of the timestamp once per second.

    One call per batch, the loop inside, quoted methods and paths looked up with ``dict.get``: a call
    per line (and one per quoted field) through ``__call__`` cost ~18,000 instructions a line
    (callgrind), two thirds of them the calls, not the formatting; this loop still ~20,000 a line
    in the API worker's writer thread, the C twin ~3,000.
    """

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""
        self._quoted = _Quoted()

    def __call__(self, items: list[Any], wall: float) -> str:
        """The entries of the flat `items` as JSON lines, each ended by a newline; `wall`: what to add to
        their CLOCK_MONOTONIC times for the wall clock's."""
        if _native is not None:
            text = _native.json_lines(items, wall)
            if text is not None:  # None: an entry the C twin does not take (tests' odd fields)
                return text  # type: ignore[no-any-return]
        known, quote, template = self._quoted.get, self._quoted.quote, _JSON
        last, stamp = self._second, self._stamp
        lines: list[str] = []
        append = lines.append
        for ts, client, method, path, status, n_in, n_out, seconds, runner_s, rid in _entries(items):
            ts += wall
            second = int(ts)
            if second != last:
                last, stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            append(template % (stamp, int((ts - second) * 1e6), client, known(method) or quote(method),
                               known(path) or quote(path), status, n_in, n_out, seconds * 1e3, runner_s * 1e3,
                               rid.decode("latin-1")))
        self._second, self._stamp = last, stamp
        lines.append("")
        return "\n".join(lines)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream of bare JSON lines: batches are written as they are, with no log record per line."""


def _server_handlers(fmt_json: bool) -> list[logging.Handler]:
    """The server's log: the root logger's handlers (JSON lines go bare to their streams)."""
    handlers = list(logging.getLogger().handlers) or [logging.StreamHandler(sys.stderr)]
    if not fmt_json:
        return handlers
    plain: list[logging.Handler] = []
    for h in handlers:
        stream = getattr(h, "stream", None)
        plain.append(_LineHandler(stream) if stream is not None else h)
    return plain


def _write_lines(handler: _LineHandler, text: str) -> None:
    """One write and one flush of the lines in `text` (a LogRecord per line would cost more than the line)."""
    try:
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(text)
            handler.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"name": LOGGER_NAME, "msg": text.partition("\n")[0]}))


#: the ``emit`` of handlers that only format a record and write it to their stream (and flush)
_PLAIN_EMITS = (logging.StreamHandler.emit, logging.FileHandler.emit)


def write_records(handler: logging.Handler, records: list[logging.LogRecord]) -> None:
    """Hand `records` to `handler`: one write and one flush for a stream handler, else one by one."""
    records = [r for r in records if r.levelno >= handler.level and handler.filter(r)]
    if not records:
        return
    stream = getattr(handler, "stream", None)
    if stream is None or type(handler).emit not in _PLAIN_EMITS:  # one that emits its own way gets every record
        for r in records:
            try:
                handler.handle(r)
            except Exception:  # handlers report their own errors; one that raises must not stop the others
                handler.handleError(r)
        return
    try:
        terminator = handler.terminator  # type: ignore[attr-defined]
        text = "".join(handler.format(r) + terminator for r in records)
        with handler.lock:  # type: ignore[union-attr]
            stream.write(text)
            handler.flush()
    except Exception:
        handler.handleError(records[0])


class AccessLog:
    """The access log of one API worker; `start()` before serving, `stop()` writes what is left."""

    def __init__(self, settings: AccessLogSettings, handlers: list[logging.Handler] | None = None) -> None:
        self.settings = settings
        self._rate = settings.sample_rate
        self._sampled = settings.sample_rate < 1.0
        self._slow_s = settings.slow_ms / 1000.0
        is_json = settings.format == "json"
        self._format: Callable[[list[Any], float], str] = _JsonLines() if is_json else _text
        self._handlers = handlers if handlers is not None else _server_handlers(is_json)
        # The loop appends an entry's FIELDS items at once (list.extend of a tuple: one C call, atomic
        # under the GIL); the writer takes every waiting item with one slice and one slice delete,
        # each atomic too: what the loop appends between them lies past the slice and stays for the
        # next turn. Popping a deque item by item (ten popleft calls an entry) cost ~1,700 instructions
        # an entry more, loop and writer together (callgrind); `_taking` keeps two callers of flush() from taking the same items.
        self._pending: list[Any] = []
        self._taking = threading.Lock()
        # where a traced request's (context, method, path, status, ID, end time) goes (`trace_into`)
        self._traced: list[Any] | None = None
        #: the protocol's ``on_response`` hook, ``record(conn, request, status, body_bytes, sink=None)``:
        #: the C twin of `_record` (`_native.Recorder`, no Python frame per response) where it is built
        self.record: Callable[..., None] = self._recorder()
        self._writer = FlushThread(self.flush, "shmserve-access-log", "writing access log lines")
        #: lines written so far (for tests and statistics)
        self.written = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._writer.start()

    def stop(self) -> None:
        """Write every waiting line, then stop the writer thread."""
        self._writer.stop()
        self.flush()  # lines recorded without a writer, or after it stopped

    def _recorder(self) -> Callable[..., None]:
        """The hook `record` is: the C twin over this log's queues, or `_record`."""
        if _native is None:
            return self._record
        return _native.Recorder(self._pending, self._traced, self._rate if self._sampled else 1.0,  # type: ignore[no-any-return]
                                self._slow_s, _client_of, runner_seconds, self._record_failed, _random)

    def trace_into(self, traced: list[Any]) -> None:
        """Make `record` also queue every traced request's spans on `traced`, as ``(context, method, path,
        status, request ID, end time)``: a traced request is one whose `RequestContext` has a ``parent``
        (`shmserve.http.observe`). So while the access log and tracing are both on, the protocol's hook is
        still `record` alone: one call per response and, in C, no Python frame."""
        self._traced = traced
        self.record = self._recorder()

    def _record(self, conn: Any, request: Any, status: int, body_bytes: int, sink: Sink | None = None) -> None:
        """Keep the line of one response for the writer (on the event loop; one list extend), and a traced
        request's spans (`trace_into`). Never raises: this is the protocol's ``on_response`` hook itself
        (`Observer.hook`), as `record`, when the C twin is not built.

        `sink`: the request's runner call traces (default: its `RequestContext`, ``request.ctx``, which is
        that list); their round trips are summed here (runner time), so the entry does not keep them alive until
        the writer's turn. Written for few bytecodes: the loop runs it for every response.
        """
        try:
            now = _monotonic()
            ctx = request.ctx
            if self._traced is not None and ctx is not None and getattr(ctx, "parent", None) is not None:
                self._traced.append((ctx, request.method, request.path, status, request.request_id, now))
            seconds = now - (request.t_begin or request.t_parsed)
            if self._sampled and status < 500 and seconds < self._slow_s and _random() >= self._rate:
                return
            try:
                client = conn.access_client  # a plain attribute load; a getattr call costs more
            except AttributeError:
                client = _client_of(conn)
            if sink is None:
                sink = ctx  # a RequestContext is its runner calls' traces (shmserve.http.observe)
            self._pending.extend((now, client, request.method or b"-", request.path or b"-", status,
                                  len(request.body), body_bytes, seconds, runner_seconds(sink) if sink else 0.0,
                                  request.request_id or b"-"))
        except Exception as exc:
            self._record_failed(request, exc)

    @staticmethod
    def _record_failed(request: Any, exc: BaseException) -> None:
        """Log why the access line or the spans of `request` could not be queued (the hook never raises)."""
        try:
            rid = getattr(request, "request_id", b"").decode("latin-1")
        except Exception:
            rid = "?"
        _log.error("recording the access line or spans of request %s failed", rid, exc_info=exc)

    def add(self, entry: Entry) -> None:
        """Queue one entry as it is (tests; `record` builds its own)."""
        if len(entry) != FIELDS:
            raise ValueError(f"an access log entry has {FIELDS} fields, not {len(entry)}")
        self._pending.extend(entry)

    @property
    def waiting(self) -> int:
        """How many entries wait for the writer."""
        return len(self._pending) // FIELDS

    def flush(self) -> None:
        """Format and write every waiting line now (the writer thread calls this; so may tests)."""
        pending = self._pending
        with self._taking:
            n = len(pending)  # whole entries: the loop extends FIELDS items at a time
            items = pending[:n]
            del pending[:n]
        if not items:
            return
        wall = time.time() - time.monotonic()
        text = self._format(items, wall)
        records: list[logging.LogRecord] = []
        for handler in self._handlers:
            if type(handler) is _LineHandler:
                _write_lines(handler, text)
                continue
            if not records:  # only for handlers that format records themselves
                # No line holds a newline: JSON escapes it, the request line cannot hold one (the
                # parser refuses control characters there) and the other fields are tokens and numbers.
                lines = text.split("\n")
                for ts, line in zip(items[::FIELDS], lines):
                    rec = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, line, None, None)
                    rec.created = ts + wall
                    rec.msecs = (rec.created % 1) * 1000.0
                    records.append(rec)
            write_records(handler, records)
        self.written += len(items) // FIELDS
