"""OpenTelemetry spans built after the fact, checked with the SDK's in-memory exporter (no processes)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from shmserve.config.schema import ShmserveConfig, TracingSettings  # noqa: E402
from shmserve.http.tracing import Tracer  # noqa: E402
from tests.unit.test_http_app import Harness  # noqa: E402
from tests.unit.test_http_protocol import post  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()


def traced(rate: float = 1.0) -> tuple[Harness, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    settings = TracingSettings(exporter="console", sample_rate=rate)
    h = Harness(tracing=settings, tracer=Tracer(settings, "test_svc", exporter=exporter))
    return h, exporter


def finished(h: Harness, exporter: InMemorySpanExporter) -> tuple:
    """The spans exported so far, after the writer's turn (spans are built on the writer thread)."""
    h.app.observer.flush()
    return exporter.get_finished_spans()


@pytest.fixture
def tr() -> Iterator[tuple[Harness, InMemorySpanExporter]]:
    h, exporter = traced()
    yield h, exporter
    h.close()


def test_incoming_traceparent_is_the_parent_and_its_trace_id_is_on_every_span(tr: tuple[Harness, InMemorySpanExporter]) -> None:
    h, exporter = tr
    (status, _, _), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"traceparent: %s\r\nX-Request-ID: span-1\r\n" % TRACEPARENT))
    assert status == 200
    spans = finished(h, exporter)
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE_ID}
    server, = (s for s in spans if s.kind == SpanKind.SERVER)
    assert server.name == "POST /predict" and format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert server.attributes["http.response.status_code"] == 200
    assert all(s.attributes["shmserve.request_id"] == "span-1" for s in spans)
    children = {s.name: s for s in spans if s is not server}
    assert {"decode", "encode"} <= set(children)
    for s in children.values():
        assert s.parent.span_id == server.context.span_id
        assert server.start_time <= s.start_time <= s.end_time <= server.end_time


def test_unsampled_traceparent_is_not_traced(tr: tuple[Harness, InMemorySpanExporter]) -> None:
    h, exporter = tr
    h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"traceparent: 00-%s-%s-00\r\n" % (TRACE_ID.encode(), PARENT_ID.encode())))
    assert finished(h, exporter) == ()


def test_without_traceparent_the_sample_rate_decides() -> None:
    h, exporter = traced(rate=0.0)
    try:
        h.exchange(post(b"/predict", b"[[1, 2, 3]]") * 5, 5)
        assert finished(h, exporter) == ()
    finally:
        h.close()
    h, exporter = traced(rate=1.0)
    try:
        h.exchange(post(b"/predict", b"[[1, 2, 3]]") * 2, 2)
        roots = [s for s in finished(h, exporter) if s.parent is None]
        assert len(roots) == 2 and roots[0].context.trace_id != roots[1].context.trace_id
    finally:
        h.close()


def test_probes_are_not_traced(tr: tuple[Harness, InMemorySpanExporter]) -> None:
    h, exporter = tr
    h.exchange(b"GET /livez HTTP/1.1\r\nHost: x\r\ntraceparent: %s\r\n\r\n" % TRACEPARENT)
    assert finished(h, exporter) == ()


def test_server_errors_mark_the_span() -> None:
    h, exporter = traced()
    try:
        (status, _, _), = h.exchange(post(b"/fail", b'{"kind": "model"}', b"traceparent: %s\r\n" % TRACEPARENT))
        assert status == 500
        server, = (s for s in finished(h, exporter) if s.kind == SpanKind.SERVER)
        assert not server.status.is_ok
    finally:
        h.close()


def test_spans_are_built_on_the_writer_thread_not_the_event_loop() -> None:
    import threading
    import time

    class ThreadNoting(InMemorySpanExporter):
        threads: set[str] = set()

        def export(self, spans):  # type: ignore[no-untyped-def]
            self.threads.add(threading.current_thread().name)
            return super().export(spans)

    exporter = ThreadNoting()
    settings = TracingSettings(exporter="console", sample_rate=1.0)
    h = Harness(tracing=settings, tracer=Tracer(settings, "test_svc", exporter=exporter))
    try:
        (status, _, _), = h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"traceparent: %s\r\n" % TRACEPARENT))
        assert status == 200
        deadline = time.monotonic() + 10
        while not exporter.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.01)  # nobody calls flush(): the writer's own turn builds them
        assert exporter.get_finished_spans() and exporter.threads == {"shmserve-observe"}
    finally:
        h.close()


def test_runner_calls_become_queue_batch_model_spans_in_the_right_shape() -> None:
    """The shape from a recorded timeline, as the shared-memory client reports it."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    exporter = InMemorySpanExporter()
    tracer = Tracer(TracingSettings(exporter="console"), "svc", exporter=exporter)
    parent = TraceContextTextMapPropagator().extract({"traceparent": TRACEPARENT.decode()})
    t = 1000.0
    timeline = {"begin": t, "parsed": t + 0.001, "decoded": t + 0.002, "api_done": t + 0.010, "encoded": t + 0.011,
                "runners": [("double", "predict", {"submit": t + 0.003, "dequeue": t + 0.004, "batch_start": t + 0.005,
                                                   "model_start": t + 0.006, "model_end": t + 0.008,
                                                   "written": t + 0.0085, "complete": t + 0.009, "batch_size": 4})]}
    tracer.export(parent, b"POST", b"/predict", "predict", 200, b"rid-7", timeline, t + 0.012)
    tracer.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /predict", "decode", "runner double.predict", "queue", "batch", "model", "encode"}

    def parent_of(name: str) -> str:
        pid = spans[name].parent.span_id
        return next(n for n, s in spans.items() if s.context.span_id == pid)

    assert parent_of("decode") == parent_of("encode") == parent_of("runner double.predict") == "POST /predict"
    assert parent_of("queue") == parent_of("batch") == "runner double.predict"
    assert parent_of("model") == "batch"
    assert spans["runner double.predict"].attributes["shmserve.batch_size"] == 4
    ms = {n: (s.end_time - s.start_time) / 1e6 for n, s in spans.items()}
    assert ms["queue"] == pytest.approx(2.0, abs=1e-3) and ms["model"] == pytest.approx(2.0, abs=1e-3)
    assert ms["POST /predict"] == pytest.approx(12.0, abs=1e-3)
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {TRACE_ID}


def test_console_exporter_writes_spans_to_the_server_log(caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from shmserve.http.tracing import LogSpanExporter

    exporter = InMemorySpanExporter()
    tracer = Tracer(TracingSettings(exporter="console"), "svc", exporter=exporter)
    tracer.export(tracer.sample({}), b"POST", b"/x", "x", 503, b"r", {"begin": 1.0, "parsed": 1.0, "decoded": 1.25}, 1.5)
    with caplog.at_level(logging.INFO, logger="shmserve.tracing"):
        LogSpanExporter().export(exporter.get_finished_spans())
    lines = {json.loads(r.getMessage())["name"]: json.loads(r.getMessage()) for r in caplog.records}
    assert set(lines) == {"POST /x", "decode"} and all("\n" not in r.getMessage() for r in caplog.records)
    # the SDK's own JSON of the same span, key for key and value for value
    sdk = {s.name: json.loads(s.to_json(indent=None)) for s in exporter.get_finished_spans()}

    def micros(iso: str) -> int:  # the SDK rounds through a float: allow one microsecond
        return int(iso[-8:-1].replace(".", ""))

    for name, line in lines.items():
        for key in ("start_time", "end_time"):
            assert line[key][:-8] == sdk[name][key][:-8]
            assert abs(micros(line.pop(key)) - micros(sdk[name].pop(key))) <= 1
    assert lines == sdk
    assert lines["POST /x"]["status"]["status_code"] == "ERROR" and lines["decode"]["parent_id"]


def test_console_exporter_writes_a_batch_of_spans_in_one_write_and_handlers_that_emit_their_own_way_get_every_record() -> None:
    import io
    import json
    import logging

    from shmserve.http.tracing import LogSpanExporter

    class Counting(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Counting.writes += 1
            return super().write(text)

    class Keeping(logging.StreamHandler):  # type: ignore[type-arg]  # a StreamHandler that emits its own way
        def __init__(self) -> None:
            super().__init__(io.StringIO())
            self.kept: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.kept.append(record.getMessage())

    exporter = InMemorySpanExporter()
    tracer = Tracer(TracingSettings(exporter="console"), "svc", exporter=exporter)
    for _ in range(5):
        tracer.export(tracer.sample({}), b"POST", b"/x", "x", 200, b"r", {"begin": 1.0, "parsed": 1.0, "decoded": 1.25}, 1.5)
    spans = exporter.get_finished_spans()
    stream = Counting()
    plain = logging.StreamHandler(stream)
    plain.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    keeping = Keeping()
    logger = logging.getLogger("shmserve.tracing")
    logger.addHandler(plain)
    logger.addHandler(keeping)
    level, logger.level = logger.level, logging.INFO
    try:
        LogSpanExporter().export(spans)
    finally:
        logger.removeHandler(plain)
        logger.removeHandler(keeping)
        logger.setLevel(level)
    assert len(spans) == 10 and Counting.writes == 1  # a write per span before
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("shmserve.tracing: {") for line in lines)
    assert [json.loads(x.split(": ", 1)[1])["name"] for x in lines] == [s.name for s in spans]
    assert [json.loads(x)["name"] for x in keeping.kept] == [s.name for s in spans]


def test_check_settings_fails_early_on_what_every_worker_would_fail_on(tmp_path: object) -> None:
    from shmserve.errors import ConfigError
    from shmserve.http.app import check_settings

    def cfg(data: dict) -> ShmserveConfig:
        return ShmserveConfig.model_validate(data)

    check_settings(cfg({}))
    check_settings(cfg({"tracing": {"exporter": "console"}}))
    with pytest.raises(ConfigError, match="api_keys_file"):
        check_settings(cfg({"api_server": {"auth": {"api_keys_file": "/nonexistent/keys"}}}))
    grpc = cfg({"tracing": {"exporter": "otlp", "protocol": "grpc"}})
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"shmserve\[tracing\]"):
            check_settings(grpc)
    else:
        check_settings(grpc)


def test_the_callers_tracestate_is_carried_by_every_span(tr: tuple[Harness, InMemorySpanExporter]) -> None:
    h, exporter = tr
    h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"traceparent: %s\r\ntracestate: vendor=abc\r\n" % TRACEPARENT))
    spans = finished(h, exporter)
    assert spans and {s.context.trace_state.get("vendor") for s in spans} == {"abc"}
    assert all(not s.context.is_remote and s.context.trace_flags.sampled for s in spans)


def test_console_lines_keep_their_timestamps_exact_across_seconds() -> None:
    from shmserve.http import tracing

    # _iso formats each second once; nanoseconds round to the microsecond, carrying into the next second
    assert tracing._iso(1_700_000_000_999_999_400) == "2023-11-14T22:13:20.999999Z"
    assert tracing._iso(1_700_000_000_999_999_600) == "2023-11-14T22:13:21.000000Z"
    assert tracing._iso(1_700_000_000_000_000_000) == "2023-11-14T22:13:20.000000Z"
    assert tracing._iso(1_600_000_000_123_456_000) == "2020-09-13T12:26:40.123456Z"


def test_a_fractional_sample_rate_traces_that_fraction_of_requests_without_traceparent() -> None:
    """One draw per request decides (Observer.begin inlines Tracer.sample's rule): 25% of 4000 requests, not
    25% of 25%; the access-logged rest still get a context that collects their runner traces."""
    from shmserve.config.schema import AccessLogSettings
    from shmserve.http.observe import Observer
    from shmserve.http.protocol import Request

    settings = TracingSettings(exporter="console", sample_rate=0.25)
    observer = Observer(AccessLogSettings(enabled=True), settings, "svc", tracer=Tracer(settings, "svc",
                                                                                        exporter=InMemorySpanExporter()))
    try:
        contexts = [observer.begin(Request(b"POST", b"/p", {}, b"", True), "p", False) for _ in range(4000)]
        with_parent = Request(b"POST", b"/p", {b"traceparent": TRACEPARENT}, b"", True)
        traced_parent = observer.begin(with_parent, "p", False)
    finally:
        observer.close()
    assert all(ctx is not None and ctx == [] for ctx in contexts)
    traced = [ctx for ctx in contexts if ctx is not None and ctx.parent is not None]
    assert 800 <= len(traced) <= 1200  # binomial(4000, 0.25): mean 1000, sd 27
    assert all(ctx.timeline is not None and ctx.api == "p" for ctx in traced)
    assert traced_parent is not None and traced_parent.parent is not None  # a sampled traceparent: always
    assert format(traced_parent.parent.trace_id, "032x") == TRACE_ID
