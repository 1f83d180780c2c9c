"""The observer: console spans exported on the writer's own turn, no exporter thread (no processes)."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from shmserve.config.schema import AccessLogSettings, TracingSettings  # noqa: E402
from shmserve.http.observe import Observer  # noqa: E402
from shmserve.http.protocol import HttpProtocol, Request  # noqa: E402


def _served(observer: Observer, n: int, prefix: str = "obs") -> None:
    """`n` traced requests answered, through the observer's hook as the protocol calls it."""
    conn = object.__new__(HttpProtocol)
    conn.transport = None
    for i in range(n):
        r = Request(b"POST", b"/p", {}, b"", True)
        r.request_id = f"{prefix}-{i}".encode()
        assert observer.begin(r, "p", False) is not None
        observer.hook(conn, r, 200, 0)  # type: ignore[misc]


def test_console_spans_are_exported_by_the_writer_turn_without_a_thread_of_their_own(caplog: pytest.LogCaptureFixture) -> None:
    before = {t.name for t in threading.enumerate()}
    with caplog.at_level(logging.INFO, "shmserve.tracing"):
        observer = Observer(AccessLogSettings(enabled=False), TracingSettings(exporter="console", sample_rate=1.0), "svc")
        try:
            started = {t.name for t in threading.enumerate()} - before
            assert started == {"shmserve-observe"}  # no BatchSpanProcessor worker
            _served(observer, 3, "a")
            deadline = time.monotonic() + 10
            while len(caplog.records) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)  # nobody calls flush(): the writer's turn writes them (2 spans a request)
            assert sorted({_rid(r) for r in caplog.records}) == ["a-0", "a-1", "a-2"]
            _served(observer, 2, "b")
        finally:
            observer.close()  # the last ones: written at close
    ids = [_rid(r) for r in caplog.records]
    assert sorted(ids) == sorted(["a-0", "a-1", "a-2", "b-0", "b-1"] * 2)  # each span once


def _rid(record: logging.LogRecord) -> str:
    return str(json.loads(record.getMessage())["attributes"]["shmserve.request_id"])


def test_a_failing_console_export_is_logged_and_the_next_turn_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    observer = Observer(AccessLogSettings(enabled=False), TracingSettings(exporter="console", sample_rate=1.0), "svc")
    turn = observer._turn_spans
    assert turn is not None
    calls: list[int] = []

    def broken(spans: list) -> None:
        calls.append(len(spans))
        raise OSError("log gone")

    turn.exporter.export = broken  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR, "shmserve.http"):
            _served(observer, 1)
            observer.flush()
            _served(observer, 1)
            observer.flush()
    finally:
        observer.close()
    assert calls == [2, 2] and "exporting 2 spans failed" in caplog.text  # a request: decode and its server span


def _outcome(ctx: object, request: Request) -> object:
    """What a begin call decided: None, or (the context is request.ctx, api, parent, timeline's keys)."""
    if ctx is None:
        return None
    assert ctx is request.ctx and type(ctx).__name__ == "RequestContext" and ctx == []
    return (ctx.api, ctx.parent, sorted(ctx.timeline or ()))  # type: ignore[attr-defined]


@pytest.mark.parametrize("logged", [True, False])
def test_begin_in_c_decides_as_the_python_twin(monkeypatch: pytest.MonkeyPatch, logged: bool) -> None:
    from shmserve.http import observe
    from shmserve.http.tracing import NEW_TRACE, Tracer

    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    cases = [({}, False), ({}, False), ({}, True), ({b"traceparent": traceparent}, False), ({}, False)]
    outcomes = []
    for native in (True, False):
        draws = iter([0.9, 0.1, 0.5, 0.05] * 3)  # one draw per request but the one with a traceparent
        draw = draws.__next__
        monkeypatch.setattr(observe, "_random", draw)
        monkeypatch.setattr("shmserve.http.tracing.random.random", draw)
        settings = TracingSettings(exporter="console", sample_rate=0.25)
        observer = Observer(AccessLogSettings(enabled=logged), settings, "svc", tracer=Tracer(settings, "svc"))
        try:
            begin = observer.begin if native else observer._begin
            assert (type(begin).__name__ == "Beginner") == (native and observe._native is not None)
            got = []
            for headers, asked in cases:
                r = Request(b"POST", b"/p", dict(headers), b"", True)
                got.append(_outcome(begin(r, "p", asked), r))
        finally:
            observer.close()
        outcomes.append(got)
        assert next(draws) == 0.9  # one draw each (0.9, 0.1, the asked one's 0.5, 0.05) but the traceparent one's
    assert outcomes[0] == outcomes[1]
    timeline = ["begin", "decoded", "parsed"]
    assert outcomes[0][1] == outcomes[0][4] == ("p", NEW_TRACE, timeline) and outcomes[0][2] == ("p", None, timeline)
    assert outcomes[0][0] == (("", None, []) if logged else None)
    assert outcomes[0][3][1] is not None and outcomes[0][3][1] is not NEW_TRACE  # the caller's span context


def test_begin_in_c_with_the_access_log_alone() -> None:
    observer = Observer(AccessLogSettings(enabled=True), TracingSettings(), "svc")
    try:
        r = Request(b"POST", b"/p", {}, b"", True)
        assert _outcome(observer.begin(r, "p", False), r) == ("", None, [])
        asked = Request(b"POST", b"/p", {}, b"", True)
        assert _outcome(observer.begin(asked, "p", True), asked) == ("p", None, ["begin", "decoded", "parsed"])
    finally:
        observer.close()


def test_the_tracing_only_hook_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    observer = Observer(AccessLogSettings(enabled=False), TracingSettings(exporter="console", sample_rate=1.0), "svc")
    try:
        broken = Request(b"POST", b"/p", {}, b"", True)
        del broken.ctx  # a request the app never began: its context cannot be read
        broken.request_id = b"no-ctx"
        with caplog.at_level(logging.ERROR, "shmserve.http"):
            observer.hook(object.__new__(HttpProtocol), broken, 200, 0)  # type: ignore[misc]
        assert "recording the access line or spans of request no-ctx failed" in caplog.text
    finally:
        observer.close()
