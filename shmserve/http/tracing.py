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

from ..config.schema import TracingSettings
from ..errors import ConfigError

__all__ = ["Tracer", "LogSpanExporter"]

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


class LogSpanExporter:
    """A span exporter that writes each span as one JSON line to the ``shmserve.tracing`` log."""

    def export(self, spans: Sequence[Any]) -> Any:
        """Log `spans` (called on the span processor's thread)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            log.info("%s", span.to_json(indent=None))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here."""
        return True


class Tracer:
    """Samples requests and exports their spans; one per API worker.

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
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self.rate = settings.sample_rate
        # Sampling is decided here, before the request runs; the provider only honours the parent.
        self.provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False,
                                       resource=Resource.create({"service.name": settings.service_name or service_name}))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            self.provider.add_span_processor(BatchSpanProcessor(span_exporter(settings)))
        self._tracer = self.provider.get_tracer("shmserve")
        self._propagator = TraceContextTextMapPropagator()
        self._root: Any = None

    def sample(self, headers: dict[bytes, bytes]) -> Any:
        """The parent context of a request to trace, or None to leave it untraced."""
        parent = headers.get(b"traceparent")
        if parent is not None:
            carrier = {"traceparent": parent.decode("latin-1")}
            state = headers.get(b"tracestate")
            if state is not None:
                carrier["tracestate"] = state.decode("latin-1")
            ctx = self._propagator.extract(carrier)
            sc = self._trace.get_current_span(ctx).get_span_context()
            if sc.is_valid:
                return ctx if sc.trace_flags.sampled else None
            # a malformed traceparent is ignored (W3C): sample as if there were none
        if self.rate >= 1.0 or random.random() < self.rate:
            if self._root is None:
                from opentelemetry.context import Context

                self._root = Context()
            return self._root
        return None

    def export(self, parent: Any, method: bytes, path: bytes, api: str | None, status: int, request_id: bytes,
               timeline: Timeline, end: float) -> None:
        """Build and export the spans of one answered request (see the module docstring)."""
        trace = self._trace
        # CLOCK_MONOTONIC -> epoch ns; every process on the host shares CLOCK_MONOTONIC.
        offset = time.time_ns() - time.monotonic_ns()

        def ns(t: float) -> int:
            return int(t * 1e9) + offset

        begin = timeline.get("begin") or timeline.get("parsed") or end
        rid = request_id.decode("latin-1")
        attrs: dict[str, Any] = {"http.request.method": method.decode("latin-1"), "url.path": path.decode("latin-1"),
                                 "http.response.status_code": status, "shmserve.request_id": rid}
        if api is not None:
            attrs["shmserve.api"] = api
            attrs["http.route"] = path.decode("latin-1")
        server = self._tracer.start_span(f"{method.decode('latin-1')} {path.decode('latin-1')}", context=parent,
                                         kind=trace.SpanKind.SERVER, attributes=attrs, start_time=ns(begin))
        if status >= 500:
            server.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))
        here = trace.set_span_in_context(server)

        def child(name: str, start: float | None, stop: float | None, ctx: Any = here, **extra: Any) -> Any:
            if start is None or stop is None:
                return None
            span = self._tracer.start_span(name, context=ctx, attributes={"shmserve.request_id": rid, **extra},
                                           start_time=ns(start))
            span.end(end_time=ns(max(start, stop)))
            return span

        child("decode", timeline.get("parsed"), timeline.get("decoded"))
        for runner, meth, t in timeline.get("runners", ()):
            submit, complete = t.get("submit"), t.get("complete")
            if submit is None or complete is None:
                continue
            call = self._tracer.start_span(f"runner {runner}.{meth}", context=here, start_time=ns(submit), attributes={
                "shmserve.request_id": rid, "shmserve.runner": runner, "shmserve.method": meth,
                "shmserve.batch_size": int(t.get("batch_size") or 0)})
            inner = trace.set_span_in_context(call)
            child("queue", submit, t.get("batch_start"), inner)
            batch = self._tracer.start_span("batch", context=inner, start_time=ns(t.get("batch_start") or submit),
                                            attributes={"shmserve.request_id": rid})
            child("model", t.get("model_start"), t.get("model_end"), trace.set_span_in_context(batch))
            batch.end(end_time=ns(t.get("written") or t.get("model_end") or complete))
            call.end(end_time=ns(complete))
        child("encode", timeline.get("api_done"), timeline.get("encoded"))
        server.end(end_time=ns(max(begin, end)))

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter."""
        self.provider.shutdown()
