"""The access log: lines through a capturing handler, sampling, slow requests (no processes)."""
from __future__ import annotations

import logging

import orjson
import pytest
from pydantic import ValidationError

from shmserve.config.schema import AccessLogSettings, ApiServerSettings, LoggingSettings
from shmserve.http.access_log import AccessLog
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
