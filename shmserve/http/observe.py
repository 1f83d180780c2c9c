"""After a response is written: the access log line and the request's spans, both made off the loop.

`Observer.begin` gives an API request a `RequestContext` when anything wants
to know about it (the access log, a sampled trace, a caller's
``X-Shmserve-Trace``); the context collects the runner calls' traces. The
protocol's ``on_response`` hook (`Observer.hook`: the access log's
`AccessLog.record`, in C where it is built) then only appends: the access
line's fields to the access log's queue, and a sampled request's context and
end time to the span queue, in one call per response. One writer thread wakes
every `FLUSH_S` seconds, formats and writes the waiting access lines and
builds and exports the waiting spans (`shmserve.http.tracing.Tracer.export`,
from the recorded timestamps), so neither formatting nor the OpenTelemetry
SDK's span objects cost the event loop anything. While the access log and
tracing are off (the default) the hook is not installed, no context is made
and no thread runs.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config.schema import AccessLogSettings, TracingSettings
from .access_log import AccessLog, _native, runner_seconds
from .flusher import FlushThread
from .protocol import HttpProtocol, Request

__all__ = ["Observer", "RequestContext"]

log = logging.getLogger("shmserve.http")
_random = random.random  # looked up once: `begin` draws for every request while tracing samples

# A traced request waiting for its spans: (context, method, path, status, request ID, end time).
_Traced = tuple["RequestContext", bytes, bytes, int, bytes, float]


class RequestContext(list[tuple[str, str, dict[str, float]]]):
    """What an observed API request collects for its access line and spans.

    It is the list of its runner calls' traces, ``(runner, method, trace)`` (`shmserve.traces`: the
    runner client appends to it): made with no Python ``__init__`` and one object, since most
    observed requests are only access-logged and this is made for each of them (a slotted object
    holding a list, built by its ``__init__``, cost ~1,000 instructions more per request). A traced
    request, or one that asked for its timeline, sets `api`, `parent` and `timeline` (`Observer.begin`);
    the others read the class's defaults.
    """

    #: the API's name (set when the request is traced)
    api = ""
    #: the OpenTelemetry parent context when the request is traced, else None
    parent: Any = None
    #: the ``X-Shmserve-Trace`` timeline (CLOCK_MONOTONIC times) when traced or asked for, else None
    timeline: dict[str, Any] | None = None

    def runner_seconds(self) -> float:
        """Summed round trips of the request's runner calls."""
        return runner_seconds(self)


class _TurnSpans:
    """The span processor of the console exporter: the spans a writer turn builds, exported in one call
    at the end of the turn (`export_due`; one write to the log).

    The SDK's ``BatchSpanProcessor`` runs a thread of its own, which wakes, takes the GIL from the event
    loop and writes at its own times; the console exporter only formats and writes, so the observer's
    writer thread, awake anyway, does it: one thread fewer contending for the GIL with the loop. (An
    OTLP exporter, which waits on the network, keeps the SDK's processor and its thread.)
    """

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self._spans: list[Any] = []
        #: what `Tracer.export` hands each finished span to: the list's own append (no frame per span)
        self.on_end = self._spans.append

    def export_due(self) -> None:
        """Export the spans built so far (on the writer thread; a failing exporter is logged, not fatal)."""
        spans = self._spans
        due = spans[:]
        del spans[:len(due)]
        if due:
            try:
                self.exporter.export(due)
            except Exception:
                log.exception("exporting %d spans failed", len(due))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.export_due()
        return True

    def shutdown(self) -> None:
        self.export_due()
        self.exporter.shutdown()


class Observer:
    """The access log and the tracer of one API worker (either may be None), and their writer thread."""

    def __init__(self, access: AccessLogSettings, tracing: TracingSettings, service_name: str,
                 access_log: AccessLog | None = None, tracer: Any = None) -> None:
        if access_log is None and access.enabled:
            access_log = AccessLog(access)
        self._turn_spans: _TurnSpans | None = None
        if tracer is None and tracing.enabled:
            from .tracing import Tracer, span_exporter

            if tracing.exporter == "console":
                self._turn_spans = _TurnSpans(span_exporter(tracing))
                tracer = Tracer(tracing, service_name, exporter=self._turn_spans)  # no exporter thread
                tracer.processor = self._turn_spans  # spans go straight to its list
            else:
                tracer = Tracer(tracing, service_name)
        self.access_log = access_log
        self.tracer = tracer
        # what `begin` samples with: the tracer's rate, and the parent of a new trace (None: no tracer)
        self._rate: float | None = None
        if tracer is not None:
            from .tracing import NEW_TRACE

            self._rate, self._new_trace = tracer.rate, NEW_TRACE
        self.active = access_log is not None or tracer is not None
        #: ``begin(request, api, asked)``: the C twin of `_begin` where it is built (`_native.Beginner`:
        #: an access-logged request that is not traced gets its context with no Python frame)
        self.begin: Callable[[Request, str, bool], RequestContext | None] = self._begin
        if _native is not None and self.active:
            self.begin = _native.Beginner(RequestContext, -1.0 if self._rate is None else self._rate,
                                          access_log is not None, self._begin, self._sampled, _random)
        # The loop appends (list.append: atomic), the writer takes every waiting one with a slice and a
        # slice delete under `_taking` (each atomic: what the loop appends in between stays for the next
        # turn). With the access log on, its hook queues them too (`AccessLog.trace_into`).
        self._traced: list[_Traced] = []
        self._taking = threading.Lock()
        self._hook: Callable[..., None] | None = None
        if access_log is not None:
            if tracer is not None:
                access_log.trace_into(self._traced)
            self._hook = access_log.record
        elif tracer is not None:
            self._hook = self.on_response if _native is None else _native.Recorder(
                None, self._traced, 1.0, 0.0, None, None, AccessLog._record_failed, None)
        self._writer = FlushThread(self.flush, "shmserve-observe", "writing access log lines or spans")
        if self.active:
            self._writer.start()

    def _begin(self, request: Request, api: str, asked: bool) -> RequestContext | None:
        """The context of an API request, or None when nobody observes it (`begin`'s Python twin)."""
        if not (asked or self.active):
            return None
        parent = None
        if self._rate is not None:
            # Tracer.sample's rule for a request without a traceparent, inline (a call less per request)
            if self._rate < 1.0 and b"traceparent" not in request.headers:
                if _random() < self._rate:
                    parent = self._new_trace
            else:
                parent = self.tracer.sample(request.headers)
        if parent is None and not asked and self.access_log is None:
            return None  # traced only when sampled, and this one is not: nothing to collect
        if parent is not None or asked:
            return self._timed(request, api, parent)
        ctx = request.ctx = RequestContext()  # only the access log's runner time is collected
        return ctx

    def _sampled(self, request: Request, api: str) -> RequestContext:
        """The context of a request without traceparent drawn for a new trace (`_native.Beginner` drew)."""
        return self._timed(request, api, self._new_trace)

    @staticmethod
    def _timed(request: Request, api: str, parent: Any) -> RequestContext:
        """The context of a traced request (`parent`) or of one that asked for its timeline (None)."""
        ctx = request.ctx = RequestContext()
        ctx.api, ctx.parent = api, parent
        ctx.timeline = {"begin": request.t_begin, "parsed": request.t_parsed, "decoded": time.monotonic()}
        return ctx

    @property
    def hook(self) -> Callable[[HttpProtocol, Request, int, int], None] | None:
        """The protocol's ``on_response`` hook: None while nothing observes; else the access log's `record`
        (which queues a traced request's spans too: `AccessLog.trace_into`), or, with tracing alone, the
        C twin of `on_response` where it is built: one call per response, no frame of ours around it."""
        return self._hook

    def on_response(self, conn: HttpProtocol, request: Request, status: int, body_bytes: int) -> None:
        """The hook while tracing alone is on (without the C twin): queue a traced request's spans (never raises)."""
        try:
            ctx: RequestContext | None = request.ctx
            if ctx is not None and ctx.parent is not None:
                self._traced.append((ctx, request.method, request.path, status, request.request_id, time.monotonic()))
        except Exception as exc:
            AccessLog._record_failed(request, exc)

    def flush(self) -> None:
        """Write the waiting access lines and export the waiting spans now (the writer calls this; so may tests)."""
        if self.access_log is not None:
            self.access_log.flush()
        traced, tracer = self._traced, self.tracer
        with self._taking:
            n = len(traced)
            due = traced[:n]
            del traced[:n]
        if tracer is None:
            return
        for ctx, method, path, status, rid, end in due:
            timeline = dict(ctx.timeline or ())
            timeline["runners"] = ctx
            try:
                tracer.export(ctx.parent, method, path, ctx.api, status, rid, timeline, end)
            except Exception:  # one request's broken spans must not stop the others'
                log.exception("building the spans of request %s failed", rid.decode("latin-1"))
        if self._turn_spans is not None:
            self._turn_spans.export_due()

    def close(self) -> None:
        """Stop the writer, write and export what waits, then flush and stop the access log and the exporter."""
        self._writer.stop()
        self.flush()
        if self.access_log is not None:
            self.access_log.stop()
        if self.tracer is not None:
            self.tracer.shutdown()
