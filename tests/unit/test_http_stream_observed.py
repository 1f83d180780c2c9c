"""A streamed response reaches the access log and the spans once, when it ends (no processes)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

import shmserve
from shmserve.config.schema import AccessLogSettings, ApiServerSettings, LoggingSettings, TracingSettings
from shmserve.http.access_log import AccessLog
from shmserve.http.app import App
from shmserve.http.protocol import HttpProtocol, ServerState
from shmserve.io import JSON
from tests.unit.test_http_protocol import FakeTransport, post


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(record.getMessage()))


def stream_service() -> shmserve.Service:
    svc = shmserve.Service("stream_svc")

    @svc.api(input=JSON(), output=JSON())
    async def words(body: dict) -> AsyncIterator[str]:
        for w in body["words"]:
            yield w
        if body.get("fail"):
            raise ValueError("the stream broke after its items")

    @svc.api(input=JSON(), output=JSON())
    async def hang(body: dict) -> AsyncIterator[str]:
        yield "first"
        await asyncio.Event().wait()  # until the client leaves
        yield "never"

    return svc


class StreamHarness:
    def __init__(self, tracer: Any = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.capture = Capture()
        access = AccessLogSettings(enabled=True, format="json")
        self.executor = ThreadPoolExecutor(1)
        tracing = TracingSettings(exporter="console", sample_rate=1.0) if tracer is not None else None
        self.app = App(stream_service(), executor=self.executor, version="test",
                       settings=ApiServerSettings(logging=LoggingSettings(access=access)),
                       access_log=AccessLog(access, [self.capture]), tracing=tracing, tracer=tracer)
        self.state = ServerState(max_body_bytes=1 << 20)
        self.state.on_response = self.app.on_response

    def run(self, raw: bytes, until: Any) -> tuple[HttpProtocol, FakeTransport]:
        proto, tr = HttpProtocol(self.app, self.state), FakeTransport()
        proto.connection_made(tr)

        async def go() -> None:
            proto.data_received(raw)
            for _ in range(1000):
                if until(tr):
                    return
                await asyncio.sleep(0.005)
            raise AssertionError(f"the stream did not get there: {tr.data!r}")

        self.loop.run_until_complete(go())
        return proto, tr

    def lines(self) -> list[dict[str, Any]]:
        self.app.observer.flush()
        return self.capture.lines

    def close(self) -> None:
        self.app.close()
        self.executor.shutdown()
        self.loop.close()


@pytest.fixture
def sh() -> Iterator[StreamHarness]:
    h = StreamHarness()
    yield h
    h.close()


def test_a_finished_stream_is_logged_once_with_its_status_bytes_and_duration(sh: StreamHarness) -> None:
    _, tr = sh.run(post(b"/words", b'{"words": ["a", "bb"]}', b"X-Request-ID: s-1\r\n"),
                   lambda tr: tr.data.endswith(b"0\r\n\r\n"))
    assert b'"bb"' in tr.data
    line, = sh.lines()
    assert line["path"] == "/words" and line["status"] == 200 and line["request_id"] == "s-1"
    assert line["bytes_out"] == len(b'"a"') + len(b'"bb"') and line["bytes_in"] == 22
    assert line["duration_ms"] > 0


def test_a_stream_that_fails_after_its_head_is_logged_with_the_errors_status(sh: StreamHarness) -> None:
    sh.run(post(b"/words", b'{"words": ["a"], "fail": true}'), lambda tr: tr.closed)
    line, = sh.lines()
    assert line["status"] == 500 and line["bytes_out"] == 3


def test_a_client_that_leaves_mid_stream_is_logged_as_499(sh: StreamHarness) -> None:
    proto, tr = sh.run(post(b"/hang", b"{}"), lambda tr: b'"first"' in tr.data)
    proto.connection_lost(None)  # the client went away: the task is cancelled

    async def settle() -> None:
        for _ in range(200):
            if sh.lines():
                return
            await asyncio.sleep(0.005)

    sh.loop.run_until_complete(settle())
    line, = sh.lines()
    assert line["status"] == 499 and line["bytes_out"] == len(b'"first"')


def test_a_streamed_request_gets_its_server_span() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from shmserve.http.tracing import Tracer

    exporter = InMemorySpanExporter()
    h = StreamHarness(Tracer(TracingSettings(exporter="console", sample_rate=1.0), "stream_svc", exporter=exporter))
    try:
        h.run(post(b"/words", b'{"words": ["x"]}'), lambda tr: tr.data.endswith(b"0\r\n\r\n"))
        assert len(h.lines()) == 1
        server, = (s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER)
        assert server.name == "POST /words" and server.attributes["http.response.status_code"] == 200
    finally:
        h.close()
