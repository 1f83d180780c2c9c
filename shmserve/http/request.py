"""`Request`: one parsed HTTP request, what the application is handed; and the JSON error body."""
from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["Request", "error_body"]


class Request:
    """One parsed HTTP request. Header names are lower-cased bytes.

    shmserve/_native/http.c builds these too, setting each slot as `__init__` does: change both together
    (tests/unit/test_http_native_parse.py compares them).
    """

    __slots__ = ("method", "path", "url", "headers", "body", "keep_alive", "error", "t_begin", "t_parsed",
                 "request_id", "response_headers", "ctx")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        error: tuple[int, str] | None = None,
        t_begin: float = 0.0,
    ) -> None:
        self.method = method
        #: CLOCK_MONOTONIC times: the request's first bytes received, request complete.
        self.t_begin = t_begin
        self.t_parsed = time.monotonic()
        self.url = url
        q = url.find(b"?")
        self.path = url if q < 0 else url[:q]
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        #: ``(status, message)`` when the protocol already decided the answer (413, 400, 431).
        self.error = error
        #: set by the application: the request's ID (error bodies carry it), header lines added to
        #: every response to this request, and its own per-request state
        self.request_id = b""
        self.response_headers = b""
        self.ctx: Any = None

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.url.decode('latin-1')} {len(self.body)} bytes>"


def error_body(status: int, error: str, message: str, request_id: bytes = b"") -> bytes:
    """The JSON body of every error response (with ``request_id`` once the application gave one)."""
    if request_id:
        return orjson.dumps({"status": status, "error": error, "message": message,
                             "request_id": request_id.decode("latin-1")})
    return orjson.dumps({"status": status, "error": error, "message": message})
