"""OpenTelemetry spans of sampled requests, built after the fact from recorded timestamps.

Nothing is traced while a request runs. A sampled request collects the
CLOCK_MONOTONIC times the transport records anyway (the ``X-Shmserve-Trace``
timeline: parsed, decoded, each runner call's submit / batch start / model
start and end / result written / complete, encoded), and once its response
is written `Tracer.export` turns them into spans with explicit start and end
times. So tracing adds nothing to the shared-memory path, and an unsampled
request pays one check.

Shape of one request's trace::

    POST /predict                  SERVER, parent: the incoming traceparent (or a new trace)
      decode                       body -> the API's argument
      runner double.predict        one per runner call: submit -> complete
        queue                      submit -> the batch starts (queueing and batching delay)
        batch                      the batch starts -> this call's result is written
          model                    the model ran on the batch
      encode                       result -> response body

Sampling: a ``traceparent`` with the sampled flag is always traced (its trace
ID is on every span), one without it never; a request without one starts a
trace with probability ``tracing.sample_rate``. Exporters: ``otlp`` (gRPC or
HTTP, in a background thread), ``console`` (one JSON span per line in the
server's log). Needs ``pip install 'shmserve[tracing]'``.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..config.schema import TracingSettings
from ..errors import ConfigError
from .access_log import write_records

__all__ = ["Tracer", "LogSpanExporter", "NEW_TRACE"]

log = logging.getLogger("shmserve.tracing")

Timeline = dict[str, Any]


def _require_sdk() -> None:
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ConfigError("tracing.exporter is set but opentelemetry-sdk is not installed; "
                          "pip install 'shmserve[tracing]' or set tracing.exporter: none") from None


def span_exporter(settings: TracingSettings) -> Any:
    """The exporter `settings` name; `ConfigError` when its package is not installed."""
    _require_sdk()
    if settings.exporter == "console":
        return LogSpanExporter()
    kwargs: dict[str, Any] = {"endpoint": settings.endpoint} if settings.endpoint else {}
    try:
        if settings.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    except ImportError:
        raise ConfigError(f"tracing.exporter: otlp over {settings.protocol} needs the OTLP exporter; "
                          "pip install 'shmserve[tracing]'") from None
    return OTLPSpanExporter(**kwargs)


#: the last second `_iso` formatted and its text, replaced as one tuple (any thread may call `_iso`)
_second: tuple[int, str] = (-1, "")


def _iso(ns: int) -> str:
    """Epoch nanoseconds as ISO 8601 UTC to the nearest microsecond (as the SDK's ``to_json`` writes them)."""
    global _second
    us = (ns + 500) // 1000
    second = us // 1_000_000
    known = _second
    if known[0] != second:  # strftime and gmtime cost a third of a span's line: once a second
        known = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{known[1]}.{us % 1_000_000:06d}Z"


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches (its own and its ancestors', as propagation goes)."""
    found: list[logging.Handler] = []
    c: logging.Logger | None = logger
    while c is not None:
        found += c.handlers
        if not c.propagate:
            break
        c = c.parent  # type: ignore[assignment]
    if not found and logging.lastResort is not None:
        found.append(logging.lastResort)
    return found


class LogSpanExporter:
    """A span exporter that writes each span as one JSON line to the ``shmserve.tracing`` log.

    The keys are those of the SDK's ``ReadableSpan.to_json``; the line is made with orjson and the
    resource is formatted once, not once per span (``to_json`` costs about 40 µs a span, this 6).
    The second of a timestamp is formatted once (`_iso`), a kind's and an empty trace state's text kept.
    """

    def __init__(self) -> None:
        from opentelemetry.trace import format_span_id, format_trace_id

        self._trace_hex, self._span_hex = format_trace_id, format_span_id
        self._resources: dict[int, tuple[Any, Any]] = {}
        self._kinds: dict[Any, str] = {}
        self._states: dict[Any, str] = {}

    def _resource(self, resource: Any) -> Any:
        """The resource's JSON, made once (as an orjson fragment where orjson has them: not re-encoded)."""
        known = self._resources.get(id(resource))
        if known is None or known[0] is not resource:
            value = orjson.loads(resource.to_json())
            if hasattr(orjson, "Fragment"):
                value = orjson.Fragment(orjson.dumps(value))
            known = self._resources[id(resource)] = (resource, value)
        return known[1]

    def line(self, span: Any) -> str:
        """One span as a JSON line."""
        trace_hex, span_hex = self._trace_hex, self._span_hex
        ctx, parent, status = span.context, span.parent, span.status
        state: dict[str, str | None] = {"status_code": status.status_code.name}
        if status.description:
            state["description"] = status.description
        kind = self._kinds.get(span.kind)
        if kind is None:
            kind = self._kinds[span.kind] = str(span.kind)
        trace_state = ctx.trace_state
        shown: str | None
        if trace_state:
            shown = repr(trace_state)
        else:  # the empty state (every new trace's): its repr kept
            shown = self._states.get(type(trace_state))
            if shown is None:
                shown = self._states[type(trace_state)] = repr(trace_state)
        return orjson.dumps({
            "name": span.name,
            "context": {"trace_id": f"0x{trace_hex(ctx.trace_id)}", "span_id": f"0x{span_hex(ctx.span_id)}",
                        "trace_state": shown},
            "kind": kind,
            "parent_id": f"0x{span_hex(parent.span_id)}" if parent is not None else None,
            "start_time": _iso(span.start_time) if span.start_time else None,
            "end_time": _iso(span.end_time) if span.end_time else None,
            "status": state,
            "attributes": dict(span.attributes or {}),
            "events": [{"name": e.name, "timestamp": _iso(e.timestamp), "attributes": dict(e.attributes or {})}
                       for e in span.events],
            "links": [{"context": {"trace_id": f"0x{trace_hex(li.context.trace_id)}",
                                   "span_id": f"0x{span_hex(li.context.span_id)}"},
                       "attributes": dict(li.attributes or {})} for li in span.links],
            "resource": self._resource(span.resource),
        }).decode()

    def export(self, spans: Sequence[Any]) -> Any:
        """Log `spans` (called on the span processor's thread, up to a batch of 512 at a time).

        One record per span, formatted by each handler as ``log.info`` would have it, but the batch
        goes to a stream handler in one write and one flush (`access_log.write_records`): a
        ``log.info`` per span cost a write system call, a lock and a caller lookup each, most of
        what a sampled request cost the server.
        """
        from opentelemetry.sdk.trace.export import SpanExportResult

        if spans and log.isEnabledFor(logging.INFO):
            records = [logging.LogRecord(log.name, logging.INFO, __file__, 0, self.line(span), None, None)
                       for span in spans]
            if log.filters:
                records = [r for r in records if log.filter(r)]
            for handler in _handlers(log):
                write_records(handler, records)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here."""
        return True


class _NewTrace:
    """`Tracer.sample`'s answer for a request sampled here: it starts a new trace."""

    def __repr__(self) -> str:
        return "<new trace>"


NEW_TRACE = _NewTrace()


class Tracer:
    """Samples requests and exports their spans; one per API worker.

    The spans of a request are finished `ReadableSpan` objects made from its
    recorded times and handed straight to the span processor, not live spans
    started and ended through an SDK tracer: every span here is built after
    the fact, and this costs a twentieth of ``start_span``/``end`` (30 µs
    against 600 µs for the seven spans of a request with one runner call).
    The sampling decision is made here (`sample`), so no SDK sampler runs.

    Args:
        settings: the ``tracing`` section.
        service_name: the ``service.name`` resource attribute (default: the Service's name).
        exporter: a span exporter to use instead of the configured one (tests pass the
            SDK's in-memory exporter); with it spans are exported synchronously.
    """

    def __init__(self, settings: TracingSettings, service_name: str, exporter: Any = None) -> None:
        _require_sdk()
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._span = ReadableSpan
        self.rate = settings.sample_rate
        self._resource = Resource.create({"service.name": settings.service_name or service_name})
        self._scope = InstrumentationScope("shmserve")
        self._ids = RandomIdGenerator()
        self._sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self._error = trace.StatusCode.ERROR
        self.processor = SimpleSpanProcessor(exporter) if exporter is not None else BatchSpanProcessor(
            span_exporter(settings))
        self._propagator = TraceContextTextMapPropagator()

    def sample(self, headers: dict[bytes, bytes]) -> Any:
        """The parent of a request to trace (the caller's span context, or `NEW_TRACE`), or None to leave it untraced."""
        parent = headers.get(b"traceparent")
        if parent is not None:
            carrier = {"traceparent": parent.decode("latin-1")}
            state = headers.get(b"tracestate")
            if state is not None:
                carrier["tracestate"] = state.decode("latin-1")
            sc = self._trace.get_current_span(self._propagator.extract(carrier)).get_span_context()
            if sc.is_valid:
                return sc if sc.trace_flags.sampled else None
            # a malformed traceparent is ignored (W3C): sample as if there were none
        if self.rate >= 1.0 or random.random() < self.rate:
            return NEW_TRACE
        return None

    def _parent(self, parent: Any) -> Any:
        """The remote parent's span context (None for a new trace); an OpenTelemetry `Context` is accepted too."""
        if parent is NEW_TRACE or parent is None:
            return None
        if not isinstance(parent, self._trace.SpanContext):
            parent = self._trace.get_current_span(parent).get_span_context()
        return parent if parent.is_valid else None

    def export(self, parent: Any, method: bytes, path: bytes, api: str | None, status: int, request_id: bytes,
               timeline: Timeline, end: float) -> None:
        """Build and export the spans of one answered request (see the module docstring)."""
        trace, make, on_end = self._trace, self._span, self.processor.on_end
        resource, scope, flags, new_id = self._resource, self._scope, self._sampled, self._ids.generate_span_id
        # CLOCK_MONOTONIC -> epoch ns; every process on the host shares CLOCK_MONOTONIC.
        offset = time.time_ns() - time.monotonic_ns()

        def ns(t: float) -> int:
            return int(t * 1e9) + offset

        remote = self._parent(parent)
        trace_id = remote.trace_id if remote is not None else self._ids.generate_trace_id()
        state = remote.trace_state if remote is not None else None

        begin = timeline.get("begin") or timeline.get("parsed") or end
        rid = request_id.decode("latin-1")
        m, p = method.decode("latin-1"), path.decode("latin-1")
        attrs: dict[str, Any] = {"http.request.method": m, "url.path": p, "http.response.status_code": status,
                                 "shmserve.request_id": rid}
        if api is not None:
            attrs["shmserve.api"] = api
            attrs["http.route"] = p
        status_kw = {"status": trace.Status(self._error, f"HTTP {status}")} if status >= 500 else {}
        # The server span's context first: its children name it as their parent. Children are handed
        # to the processor before their parents (as live spans end), the server span last.
        server = trace.SpanContext(trace_id, new_id(), False, flags, state)
        mine = {"shmserve.request_id": rid}

        def child(name: str, start: float | None, stop: float | None, up: Any = server) -> None:
            if start is not None and stop is not None:
                on_end(make(name, trace.SpanContext(trace_id, new_id(), False, flags, state), up, resource, mine,
                            start_time=ns(start), end_time=ns(max(start, stop)), instrumentation_scope=scope))

        child("decode", timeline.get("parsed"), timeline.get("decoded"))
        for runner, meth, t in timeline.get("runners", ()):
            submit, complete = t.get("submit"), t.get("complete")
            if submit is None or complete is None:
                continue
            call = trace.SpanContext(trace_id, new_id(), False, flags, state)
            child("queue", submit, t.get("batch_start"), call)
            batch_start = t.get("batch_start") or submit
            batch = trace.SpanContext(trace_id, new_id(), False, flags, state)
            child("model", t.get("model_start"), t.get("model_end"), batch)
            on_end(make("batch", batch, call, resource, mine, start_time=ns(batch_start),
                        end_time=ns(max(batch_start, t.get("written") or t.get("model_end") or complete)),
                        instrumentation_scope=scope))
            on_end(make(f"runner {runner}.{meth}", call, server, resource, {
                "shmserve.request_id": rid, "shmserve.runner": runner, "shmserve.method": meth,
                "shmserve.batch_size": int(t.get("batch_size") or 0)}, start_time=ns(submit),
                end_time=ns(max(submit, complete)), instrumentation_scope=scope))
        child("encode", timeline.get("api_done"), timeline.get("encoded"))
        on_end(make(f"{m} {p}", server, remote, resource, attrs, kind=trace.SpanKind.SERVER, start_time=ns(begin),
                    end_time=ns(max(begin, end)), instrumentation_scope=scope, **status_kw))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter."""
        self.processor.shutdown()
