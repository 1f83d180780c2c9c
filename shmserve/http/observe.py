"""After a response is written: the access log line and the request's spans.

`Observer.begin` gives an API request a `RequestContext` when anything wants
to know about it (the access log, a sampled trace, a caller's
``X-Shmserve-Trace``); the context collects the runner calls' traces. The
protocol's ``on_response`` hook (`Observer.on_response`) then writes the
access line and exports the spans. While the access log and tracing are off
(the default) the hook is not installed and no context is made.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ..config.schema import AccessLogSettings, TracingSettings
from ..traces import Sink
from .access_log import AccessLog
from .protocol import HttpProtocol, Request

__all__ = ["Observer", "RequestContext"]

log = logging.getLogger("shmserve.http")


class RequestContext:
    """What an observed API request collects for its access line and spans."""

    __slots__ = ("api", "sink", "parent", "timeline")

    def __init__(self, api: str, parent: Any, timeline: dict[str, Any] | None) -> None:
        self.api = api
        #: ``(runner, method, trace)`` of every runner call the request made (`shmserve.traces`)
        self.sink: Sink = []
        #: the OpenTelemetry parent context when the request is traced, else None
        self.parent = parent
        self.timeline = timeline

    def runner_seconds(self) -> float:
        """Summed round trips of the request's runner calls."""
        total = 0.0
        for _, _, t in self.sink:  # a loop, not sum(<generator>): this runs for every logged request
            if "complete" in t and "submit" in t:
                total += t["complete"] - t["submit"]
        return total


class Observer:
    """The access log and the tracer of one API worker (either may be None)."""

    def __init__(self, access: AccessLogSettings, tracing: TracingSettings, service_name: str,
                 access_log: AccessLog | None = None, tracer: Any = None) -> None:
        if access_log is None and access.enabled:
            access_log = AccessLog(access)
        if tracer is None and tracing.enabled:
            from .tracing import Tracer

            tracer = Tracer(tracing, service_name)
        self.access_log = access_log
        self.tracer = tracer
        self.active = access_log is not None or tracer is not None
        if access_log is not None:
            access_log.start()

    def begin(self, request: Request, api: str, asked: bool) -> RequestContext | None:
        """The context of an API request, or None when nobody observes it."""
        if not (asked or self.active):
            return None
        parent = self.tracer.sample(request.headers) if self.tracer is not None else None
        if parent is None and not asked and self.access_log is None:
            return None  # traced only when sampled, and this one is not: nothing to collect
        timeline = None
        if asked or parent is not None:
            timeline = {"begin": request.t_begin, "parsed": request.t_parsed, "decoded": time.monotonic()}
        ctx = request.ctx = RequestContext(api, parent, timeline)
        return ctx

    def on_response(self, conn: HttpProtocol, request: Request, status: int, body_bytes: int) -> None:
        """The protocol's hook: log the response and export its spans (never raises)."""
        ctx: RequestContext | None = request.ctx
        try:
            if self.access_log is not None:
                self.access_log.record(conn, request, status, body_bytes, ctx.runner_seconds() if ctx else 0.0)
            if ctx is not None and ctx.parent is not None and self.tracer is not None:
                timeline = ctx.timeline or {}
                timeline["runners"] = ctx.sink
                self.tracer.export(ctx.parent, request.method, request.path, ctx.api, status, request.request_id,
                                   timeline, time.monotonic())
        except Exception:
            log.exception("access log or span export failed for request %s", request.request_id.decode())

    def close(self) -> None:
        """Flush and stop the access log and the span exporter."""
        if self.access_log is not None:
            self.access_log.stop()
        if self.tracer is not None:
            self.tracer.shutdown()
