"""Routing: request path -> the API or server endpoint that answers it.

Routes are exact paths (no patterns), so a lookup is one dict access on the
raw path bytes. The query string is ignored.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..service import API, Service

__all__ = ["Route", "Router"]


@dataclass(frozen=True)
class Route:
    """One path: either a service `api` (POST) or a server `endpoint` (GET)."""

    path: bytes
    method: bytes
    api: API | None = None
    endpoint: Callable[..., Any] | None = None

    @property
    def allow(self) -> bytes:
        """The ``Allow`` header value for a 405 answer."""
        return self.method


class Router:
    """Exact-path router over a Service's APIs plus the server's own GET endpoints."""

    def __init__(self, service: Service, endpoints: dict[str, Callable[..., Any]]) -> None:
        self.routes: dict[bytes, Route] = {}
        for path, endpoint in endpoints.items():
            key = path.encode("ascii")
            self.routes[key] = Route(key, b"GET", endpoint=endpoint)
        for api in service.apis.values():
            if api.route_bytes in self.routes:
                raise ValueError(f"API {api.name!r} route {api.route!r} clashes with a server endpoint")
            self.routes[api.route_bytes] = Route(api.route_bytes, b"POST", api=api)
        #: the route of a path, or None (404): the dict's own get, so a request costs no Python frame here
        self.resolve: Callable[[bytes], Route | None] = self.routes.get
