"""Answers the protocol makes itself (400, 408, 413, 414, 431, 503) carry a request ID and reach the access log;
streamed answers carry the ID (and CORS headers) too."""
from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from shmserve.config.schema import AccessLogSettings, ApiServerSettings, LoggingSettings
from shmserve.http.access_log import AccessLog
from shmserve.http.server import HttpServer
from tests.unit.test_http_access_log import Capture
from tests.unit.test_http_app import Harness
from tests.unit.test_http_protocol import responses


class Logged(Harness):
    """A Harness with the JSON access log captured and its state wired as `HttpServer` wires it."""

    def __init__(self) -> None:
        self.capture = Capture()
        settings = AccessLogSettings(enabled=True, format="json")
        super().__init__(settings=ApiServerSettings(logging=LoggingSettings(access=settings)),
                         access_log=AccessLog(settings, [self.capture]))
        self.state.identify = self.app.edge.identify

    def lines(self) -> list[dict]:
        self.app.observer.access_log.flush()  # type: ignore[union-attr]
        return [orjson.loads(line) for line in self.capture.lines]

    def answer(self, raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        proto, tr = self.connect()
        proto.data_received(raw)
        (answer,) = responses(tr.data)
        return answer


@pytest.fixture
def h() -> Iterator[Logged]:
    harness = Logged()
    yield harness
    harness.close()


def check(h: Logged, answer: tuple[int, dict[bytes, bytes], bytes], status: int, rid: str | None = None) -> None:
    got, headers, body = answer
    assert got == status
    sent = headers[b"x-request-id"].decode()
    assert orjson.loads(body)["request_id"] == sent
    if rid is not None:
        assert sent == rid
    (line,) = (x for x in h.lines() if x["request_id"] == sent)
    assert line["status"] == status and line["client"] == "127.0.0.1:40000"


def test_malformed_request_gets_a_minted_id(h: Logged) -> None:
    check(h, h.answer(b"NOT HTTP AT ALL\r\n\r\n"), 400)


def test_body_over_the_limit_echoes_the_callers_id(h: Logged) -> None:
    raw = b"POST /predict HTTP/1.1\r\nX-Request-ID: r-413\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
    check(h, h.answer(raw), 413, "r-413")


def test_overlong_target_and_headers(h: Logged) -> None:
    check(h, h.answer(b"GET /" + b"a" * (20 << 10) + b" HTTP/1.1\r\n\r\n"), 414)
    raw = b"GET / HTTP/1.1\r\nX-Request-ID: r-431\r\n" + b"x-pad: " + b"p" * (70 << 10) + b"\r\n\r\n"
    check(h, h.answer(raw), 431)


def test_headers_that_do_not_arrive_in_time(h: Logged) -> None:
    proto, tr = h.connect()
    proto.data_received(b"POST /predict HTTP/1.1\r\nX-Request-ID: r-408\r\nContent-Le")
    h.state.tick(time.monotonic() + 3600)
    (answer,) = responses(tr.data)
    check(h, answer, 408, "r-408")


def test_a_connection_over_the_limit_gets_an_id_and_a_log_line(h: Logged) -> None:
    h.state.max_connections = 0
    _, tr = h.connect()
    assert tr.closed
    check(h, responses(tr.data)[0], 503)


def test_the_server_wires_the_ids_into_its_state() -> None:
    h = Harness()
    try:
        assert HttpServer(h.app).state.identify == h.app.edge.identify
    finally:
        h.close()


def test_a_streamed_answer_carries_the_request_id_and_cors_headers() -> None:
    from shmserve.http.protocol import HttpProtocol, Request, ServerState
    from tests.unit.test_http_protocol import FakeTransport

    proto = HttpProtocol(object(), ServerState())  # type: ignore[arg-type]
    proto.connection_made(FakeTransport())
    proto.current = Request(b"POST", b"/gen", {}, b"", True)
    proto.current.response_headers = b"x-request-id: s-1\r\naccess-control-allow-origin: https://a.example\r\n"
    proto.start_stream(200, b"text/event-stream")
    head = b"".join(proto.transport.chunks)
    assert b"\r\nx-request-id: s-1\r\n" in head and b"\r\naccess-control-allow-origin: https://a.example\r\n" in head
