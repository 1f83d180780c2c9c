"""The access log: lines through a capturing handler, sampling, slow requests (no processes)."""
from __future__ import annotations

import gc
import logging
import time
import types

import orjson
import pytest
from pydantic import ValidationError

from shmserve.config.schema import AccessLogSettings, ApiServerSettings, LoggingSettings
from shmserve.http import access_log
from shmserve.http.access_log import AccessLog
from shmserve.http.protocol import HttpProtocol, Request
from tests.unit.test_http_app import Harness
from tests.unit.test_http_protocol import post


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def serve(settings: AccessLogSettings, raw: bytes, count: int) -> list[str]:
    cap = Capture()
    h = Harness(settings=ApiServerSettings(logging=LoggingSettings(access=settings)), access_log=AccessLog(settings, [cap]))
    try:
        h.exchange(raw, count)
    finally:
        h.close()  # flushes the queue
    return cap.lines


def test_json_lines_have_every_field() -> None:
    lines = serve(AccessLogSettings(enabled=True, format="json"),
                  post(b"/predict", b"[[1, 2, 3]]", b"X-Request-ID: a-1\r\n") + post(b"/nope", b"xy"), 2)
    ok, missing = (orjson.loads(line) for line in lines)
    assert ok["method"] == "POST" and ok["path"] == "/predict" and ok["status"] == 200
    assert ok["bytes_in"] == 11 and ok["bytes_out"] > 0
    assert ok["request_id"] == "a-1" and ok["client"] == "127.0.0.1:40000"
    assert ok["duration_ms"] >= 0 and ok["runner_ms"] >= 0 and ok["time"].endswith("Z")
    assert missing["status"] == 404 and missing["path"] == "/nope" and missing["bytes_in"] == 2
    assert missing["request_id"] and missing["request_id"] != "a-1"


def test_text_lines() -> None:
    line, = serve(AccessLogSettings(enabled=True), post(b"/v1/upper", b"abc", b"X-Request-ID: t-9\r\n"), 1)
    assert line.startswith('127.0.0.1:40000 "POST /v1/upper" 200 in=3 out=3 ') and line.endswith("id=t-9")


def test_sampling_drops_lines_but_slow_and_failed_requests_are_always_logged() -> None:
    none = AccessLogSettings(enabled=True, format="json", sample_rate=0.0, slow_ms=10_000)
    assert serve(none, post(b"/predict", b"[[1, 2, 3]]") * 3, 3) == []
    failed = serve(none, post(b"/fail", b'{"kind": "model"}'), 1)
    assert [orjson.loads(x)["status"] for x in failed] == [500]
    slow = AccessLogSettings(enabled=True, format="json", sample_rate=0.0, slow_ms=0)
    assert len(serve(slow, post(b"/predict", b"[[1, 2, 3]]") * 3, 3)) == 3


def test_access_log_is_off_by_default_and_the_hook_is_not_installed() -> None:
    h = Harness()
    try:
        assert h.app.observer.access_log is None and h.app.on_response is None
    finally:
        h.close()


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="format"):
        AccessLogSettings(format="xml")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sample_rate"):
        AccessLogSettings(sample_rate=1.5)


class CountingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass


def _entry(i: int) -> tuple:
    return (time.monotonic(), "127.0.0.1:1", b"POST", b"/p", 200, 1, 2, 0.001, 0.0, b"id-%d" % i)


def test_responses_only_queue_lines_and_the_writer_comes_for_them_by_itself() -> None:
    cap = Capture()
    log = AccessLog(AccessLogSettings(enabled=True), [cap])  # not started, no observer: nothing writes
    conn = object.__new__(HttpProtocol)
    conn.transport = None
    log.record(conn, Request(b"GET", b"/x", {}, b"", True), 200, 0)
    assert log.waiting == 1 and cap.lines == []  # a response leaves exactly one entry behind
    h = Harness(settings=ApiServerSettings(logging=LoggingSettings(access=AccessLogSettings(enabled=True))),
                access_log=log)
    try:
        h.exchange(post(b"/v1/upper", b"abc") * 20, 20)
        deadline = time.monotonic() + 10
        while len(cap.lines) < 21 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(cap.lines) == 21  # written by the observer's writer thread, before any close()
    finally:
        h.close()


def test_json_lines_quote_odd_paths_and_sum_the_runner_time() -> None:
    cap = Capture()
    log = AccessLog(AccessLogSettings(enabled=True, format="json"), [cap])
    odd = b'/a"b\\c\x01\xe9'
    sink = [("r", "m", {"submit": 1.0, "complete": 1.25}), ("r", "m", {"submit": 2.0, "complete": 2.5}),
            ("r", "m", {"submit": 3.0})]  # a call without its end counts nothing
    conn = object.__new__(HttpProtocol)
    conn.transport = None
    log.record(conn, Request(odd, odd, {}, b"", True), 200, 0, sink)
    log.record(conn, Request(b"GET", odd, {}, b"", True), 200, 0)
    log.flush()
    first, second = (orjson.loads(line) for line in cap.lines)
    assert first["path"] == first["method"] == odd.decode("latin-1") == second["path"]
    assert first["client"] == "-" and first["runner_ms"] == 750.0 and second["runner_ms"] == 0.0


def test_waiting_entries_leave_no_object_the_garbage_collector_tracks() -> None:
    # Entries wait up to FLUSH_S for the writer; each tracked object among them counts towards the
    # collector's next young collection until it is freed (a tuple per entry and the peer's
    # (host, port) tuple: two per request), and runner traces held here survived into older generations.
    log = AccessLog(AccessLogSettings(enabled=True, format="json"), [Capture()])
    conn = object.__new__(HttpProtocol)
    asked: list[str] = []
    conn.transport = types.SimpleNamespace(get_extra_info=lambda key: asked.append(key) or ("127.0.0.1", 5))
    requests = [Request(b"GET", b"/x", {}, b"", True) for _ in range(1000)]
    sink = [("r", "m", {"submit": 1.0, "complete": 1.5})]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for r in requests:
            log.record(conn, r, 200, 0, sink)
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert log.waiting == 1000
    assert grown < 50, f"1000 waiting entries added {grown} tracked objects"
    assert asked == ["peername"]  # the transport is asked once per connection, not per request
    log.flush()
    assert log.waiting == 0 and log.written == 1000
    line = orjson.loads(log._handlers[0].lines[0])  # type: ignore[attr-defined]
    assert line["client"] == "127.0.0.1:5" and line["runner_ms"] == 500.0  # summed when recorded


def test_an_entry_has_every_field() -> None:
    log = AccessLog(AccessLogSettings(enabled=True), [Capture()])
    with pytest.raises(ValueError, match="10 fields"):
        log.add((1.0, "-", b"GET"))  # type: ignore[arg-type]
    assert log.waiting == 0


def test_a_batch_is_one_write_through_the_handlers_formatter() -> None:
    stream = CountingStream()
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    log = AccessLog(AccessLogSettings(enabled=True), [handler])
    for i in range(50):
        log.add(_entry(i))
    log.flush()
    assert len(stream.writes) == 1
    lines = stream.writes[0].splitlines()
    assert len(lines) == 50 and lines[0].startswith('shmserve.access INFO 127.0.0.1:1 "POST /p" 200 in=1 out=2 ')
    assert lines[49].endswith("id=id-49")


def test_json_timestamps_keep_their_microseconds_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = Capture()
    log = AccessLog(AccessLogSettings(enabled=True, format="json"), [cap])
    log.add((10.25, "-", b"GET", b"/", 200, 0, 0, 0.0, 0.0, b"a"))
    log.add((11.5, "-", b"GET", b"/", 200, 0, 0, 0.0, 0.0, b"b"))
    # Monotonic 0.0 is wall-clock 1_699_999_990: the entries were recorded at ...000.25 and ...001.5.
    clock = types.SimpleNamespace(time=lambda: 1_699_999_990.0, monotonic=lambda: 0.0, strftime=time.strftime,
                                  gmtime=time.gmtime)
    monkeypatch.setattr(access_log, "time", clock)
    log.flush()
    assert [orjson.loads(x)["time"] for x in cap.lines] == ["2023-11-14T22:13:20.250000Z", "2023-11-14T22:13:21.500000Z"]
    assert orjson.loads(cap.lines[0])["client"] == "-"


def test_stop_writes_every_waiting_line_and_a_failing_handler_does_not_lose_the_others() -> None:
    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise OSError("disk full")

        def handleError(self, record: logging.LogRecord) -> None:
            self.failed = True

    cap, broken = Capture(), Broken()
    log = AccessLog(AccessLogSettings(enabled=True), [broken, cap])
    log.start()
    for i in range(7):
        log.add(_entry(i))
    log.stop()
    assert len(cap.lines) == 7 and broken.failed


def test_json_lines_go_bare_to_the_servers_log_streams_in_one_write() -> None:
    stream = CountingStream()
    root = logging.getLogger()
    server_handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    server_handler.setFormatter(logging.Formatter("%(asctime)s api[0] %(message)s"))
    root.addHandler(server_handler)
    try:
        log = AccessLog(AccessLogSettings(enabled=True, format="json"))  # the server's handlers
    finally:
        root.removeHandler(server_handler)
    for i in range(3):
        log.add(_entry(i))
    log.flush()
    assert len(stream.writes) == 1
    assert [orjson.loads(line)["request_id"] for line in stream.writes[0].splitlines()] == ["id-0", "id-1", "id-2"]


def test_a_stream_handler_that_emits_its_own_way_gets_every_record() -> None:
    class Keeping(logging.StreamHandler):  # type: ignore[type-arg]  # like pytest's capture or a log shipper
        def __init__(self) -> None:
            super().__init__(CountingStream())  # type: ignore[arg-type]
            self.kept: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.kept.append(record.getMessage())

    handler = Keeping()
    log = AccessLog(AccessLogSettings(enabled=True), [handler])
    for i in range(4):
        log.add(_entry(i))
    log.flush()
    assert [line.rsplit("id=", 1)[1] for line in handler.kept] == ["id-0", "id-1", "id-2", "id-3"]
    assert handler.stream.writes == []  # type: ignore[attr-defined]  # not written past its emit


def test_a_flush_leaves_no_tracked_object_per_line_behind_while_it_formats() -> None:
    # A batch's entries held as N tuples while formatting started young collections mid-batch (on
    # whichever thread allocated next) and were promoted into the older generations.
    log = AccessLog(AccessLogSettings(enabled=True, format="json"), [access_log._LineHandler(CountingStream())])  # type: ignore[arg-type]
    for i in range(1000):
        log.add(_entry(i))
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        log.flush()
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert log.written == 1000 and grown < 50, f"a flush of 1000 lines made {grown} tracked objects"


def test_the_hook_is_record_itself_while_tracing_is_off_and_it_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(settings=ApiServerSettings(logging=LoggingSettings(access=AccessLogSettings(enabled=True))),
                access_log=AccessLog(AccessLogSettings(enabled=True), [Capture()]))
    try:
        assert h.app.on_response == h.app.observer.access_log.record  # type: ignore[union-attr]
        broken = Request(b"GET", b"/x", {}, b"", True)
        broken.t_parsed = None  # type: ignore[assignment]  # a request that cannot be measured
        with caplog.at_level(logging.ERROR, "shmserve.http"):
            h.app.on_response(object.__new__(HttpProtocol), broken, 200, 0)
        assert "recording the access line" in caplog.text and h.app.observer.access_log.waiting == 0  # type: ignore[union-attr]
    finally:
        h.close()


def test_lines_queued_while_a_flush_takes_the_batch_are_written_once_each() -> None:
    """The writer takes the waiting items with a slice and a slice delete while the loop keeps appending:
    an entry appended in between must stay for the next flush, not be lost or written twice."""
    import sys
    import threading

    cap = Capture()
    log = AccessLog(AccessLogSettings(enabled=True, format="json"), [cap])
    done = threading.Event()
    flushed = threading.Event()  # set after each flush
    flushes = 0
    added = 0

    def loop() -> None:
        # 20,000 entries racing the flushes; on a busy machine they may all go in while the first flush
        # formats (pure Python: ~20 µs a line), so then one more after each flush until two overlapped
        nonlocal added
        for _ in range(20000):
            log.add(_entry(added))
            added += 1
        deadline = time.monotonic() + 30
        while flushes < 2 and time.monotonic() < deadline:
            flushed.clear()
            log.add(_entry(added))
            added += 1
            flushed.wait(1.0)
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns every few bytecodes, not every 5 ms
    try:
        t = threading.Thread(target=loop)
        t.start()
        while not done.is_set():  # bounded: the appending thread ends
            log.flush()
            flushes += 1
            flushed.set()
        t.join()
    finally:
        sys.setswitchinterval(interval)
    log.flush()
    ids = [orjson.loads(line)["request_id"] for line in cap.lines]
    assert len(ids) == added and sorted(ids) == sorted(f"id-{i}" for i in range(added)), (len(ids), added)
    assert flushes > 1, (flushes, added)


def test_with_tracing_on_too_the_hook_is_still_record_and_queues_the_spans() -> None:
    """Access log and tracing both on: one hook call per response (`AccessLog.record`, which queues a
    traced request's spans too: `trace_into`), every line written and every traced request's spans built."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shmserve.config.schema import TracingSettings
    from shmserve.http.tracing import Tracer

    exporter = InMemorySpanExporter()
    tracing = TracingSettings(exporter="console", sample_rate=1.0)
    cap = Capture()
    settings = AccessLogSettings(enabled=True, format="json")
    h = Harness(settings=ApiServerSettings(logging=LoggingSettings(access=settings)), access_log=AccessLog(settings, [cap]),
                tracing=tracing, tracer=Tracer(tracing, "svc", exporter=exporter))
    try:
        assert h.app.on_response is h.app.observer.access_log.record  # type: ignore[union-attr]
        h.exchange(post(b"/predict", b"[[1, 2, 3]]", b"X-Request-ID: tr-1\r\n") * 3, 3)
    finally:
        h.close()  # the writer's last turn: lines and spans
    assert [orjson.loads(line)["request_id"] for line in cap.lines] == ["tr-1"] * 3
    servers = [s for s in exporter.get_finished_spans() if s.name == "POST /predict"]
    assert len(servers) == 3 and all(s.attributes["shmserve.request_id"] == "tr-1" for s in servers)


def test_with_tracing_alone_the_hook_queues_only_spans() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shmserve.config.schema import TracingSettings
    from shmserve.http.tracing import Tracer

    exporter = InMemorySpanExporter()
    tracing = TracingSettings(exporter="console", sample_rate=1.0)
    h = Harness(tracing=tracing, tracer=Tracer(tracing, "svc", exporter=exporter))
    try:
        assert h.app.observer.access_log is None and h.app.on_response is not None
        h.exchange(post(b"/predict", b"[[1, 2, 3]]") * 2, 2)
    finally:
        h.close()
    assert len([s for s in exporter.get_finished_spans() if s.name == "POST /predict"]) == 2
