"""CORS: answer browsers' preflight requests and add ``Access-Control-*`` headers for allowed origins.

Configured under ``api_server.http.cors`` with BentoML's key names. The header
lines are built once; a request pays a dict lookup of its ``Origin`` (and
nothing at all while CORS is off, the default).

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
to a route of this server is answered 200 with the allowed methods, headers and
max age; one from an origin, for a method or with headers that are not allowed
gets 400 saying which. Other responses to an allowed origin carry
``access-control-allow-origin`` (the origin itself, or ``*`` when every origin
is allowed without credentials), ``vary: origin``, the exposed headers and,
when configured, ``access-control-allow-credentials: true``.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..config.schema import CorsSettings

__all__ = ["Cors", "PreflightRejected"]


class PreflightRejected(Exception):
    """A preflight asked for what the configuration does not allow (the message says what)."""


def _line(name: bytes, values: Sequence[str]) -> bytes:
    return name + b": " + ", ".join(values).encode("latin-1") + b"\r\n" if values else b""


class Cors:
    """The CORS policy of one server."""

    def __init__(self, settings: CorsSettings) -> None:
        self.settings = settings
        origins = settings.access_control_allow_origins
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/").encode("latin-1") for o in origins if o != "*")
        self.methods = frozenset(m.upper() for m in settings.access_control_allow_methods)
        self.any_method = "*" in self.methods
        self.headers = frozenset(h.lower() for h in settings.access_control_allow_headers)
        self.any_header = "*" in self.headers
        credentials = b"access-control-allow-credentials: true\r\n" if settings.access_control_allow_credentials else b""
        # '*' cannot go with credentials (browsers refuse it), so then the origin is echoed.
        self._star = self.any_origin and not settings.access_control_allow_credentials
        self._simple_tail = (b"" if self._star else b"vary: origin\r\n") + credentials + _line(
            b"access-control-expose-headers", settings.access_control_expose_headers)
        max_age = settings.access_control_max_age
        self._preflight_tail = (b"" if self._star else b"vary: origin\r\n") + credentials + (
            b"access-control-max-age: %d\r\n" % max_age if max_age is not None else b"")
        self._methods_line = _line(b"access-control-allow-methods", tuple(sorted(self.methods)))

    def allowed(self, origin: bytes) -> bool:
        """Whether `origin` may read responses."""
        return self.any_origin or origin in self.origins

    def _allow_origin(self, origin: bytes) -> bytes:
        return b"access-control-allow-origin: " + (b"*" if self._star else origin) + b"\r\n"

    def response_headers(self, origin: bytes | None) -> bytes:
        """Header lines for an ordinary response to a request from `origin` (empty if not allowed)."""
        if origin is None or not self.allowed(origin):
            return b""
        return self._allow_origin(origin) + self._simple_tail

    def preflight_headers(self, headers: dict[bytes, bytes]) -> bytes:
        """Header lines answering a preflight; raises `PreflightRejected` when it is not allowed."""
        origin = headers.get(b"origin", b"")
        if not self.allowed(origin):
            raise PreflightRejected(f"origin {origin.decode('latin-1')!r} is not in "
                                    "api_server.http.cors.access_control_allow_origins")
        method = headers.get(b"access-control-request-method", b"").decode("latin-1").upper()
        if not self.any_method and method not in self.methods:
            raise PreflightRejected(f"method {method!r} is not in api_server.http.cors.access_control_allow_methods")
        asked = headers.get(b"access-control-request-headers", b"")
        wanted = [h.strip() for h in asked.decode("latin-1").lower().split(",") if h.strip()]
        if not self.any_header:
            refused = [h for h in wanted if h not in self.headers]
            if refused:
                raise PreflightRejected(f"headers {refused} are not in api_server.http.cors.access_control_allow_headers")
        methods = b"access-control-allow-methods: " + method.encode() + b"\r\n" if self.any_method else self._methods_line
        allow_headers = b"access-control-allow-headers: " + asked + b"\r\n" if wanted else b""
        return self._allow_origin(origin) + methods + allow_headers + self._preflight_tail


def is_preflight(method: bytes, headers: dict[bytes, bytes]) -> bool:
    """Whether a request is a CORS preflight."""
    return method == b"OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers
