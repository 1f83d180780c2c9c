"""`Context`: the request an API is answering and the response it shapes.

An API function that declares a parameter named ``ctx`` (or annotated
``shmserve.Context``) gets one per request::

    @svc.api(input=JSON(), output=JSON())
    def predict(body, ctx: shmserve.Context):
        user = ctx.request.headers.get("x-user")
        ctx.response.status_code = 202
        ctx.response.headers["x-model"] = "v2"
        ctx.response.set_cookie("seen", "1", max_age=3600)
        return {"user": user, "page": ctx.request.query.get("page")}

``ctx.state`` is one dict per API worker, shared by every request and by the
startup and shutdown hooks (``@svc.on_startup`` hooks that take an argument
get a Context whose ``request`` is None).
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Context", "RequestInfo", "ResponseInfo", "Cookie", "Headers", "run_hooks"]

log = logging.getLogger("shmserve.http")

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


class Headers(MutableMapping[str, str]):
    """Header names compared case-insensitively; iteration gives lower-cased names."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = {}
        for k, v in (items or {}).items():
            self[k] = v

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __setitem__(self, name: str, value: str) -> None:
        self._items[name.lower()] = str(value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class RequestInfo:
    """What an API sees of its request: `headers`, `path`, `query` (first value per name),
    `query_params` (every value per name), `method` and the raw `body`."""

    def __init__(self, method: bytes, url: bytes, path: bytes, headers: Mapping[bytes, bytes], body: bytes) -> None:
        self.method = method.decode("latin-1")
        self.path = path.decode("latin-1")
        self.headers = Headers({k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()})
        q = url.find(b"?")
        self.query_string = url[q + 1:].decode("latin-1") if q >= 0 else ""
        self.query_params: dict[str, list[str]] = parse_qs(self.query_string, keep_blank_values=True)
        self.query = {k: v[0] for k, v in self.query_params.items()}
        self.body = body

    def __repr__(self) -> str:
        return f"<RequestInfo {self.method} {self.path}>"


@dataclass
class Cookie:
    """One ``Set-Cookie`` of the response."""

    key: str
    value: str
    max_age: int | None = None
    expires: str | None = None
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    httponly: bool = False
    samesite: str | None = "lax"

    def header_value(self) -> str:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar[self.key] = self.value
        except Exception as exc:  # http.cookies.CookieError for an illegal key
            raise ValueError(f"cookie name {self.key!r} is not valid ({exc})") from None
        morsel = jar[self.key]
        for attr, val in (("max-age", self.max_age), ("expires", self.expires), ("path", self.path),
                          ("domain", self.domain), ("samesite", self.samesite)):
            if val is not None:
                morsel[attr] = str(val)
        if self.secure:
            morsel["secure"] = True
        if self.httponly:
            morsel["httponly"] = True
        return morsel.OutputString()


class ResponseInfo:
    """What an API may set on its response: `status_code`, `headers` and `cookies`."""

    def __init__(self) -> None:
        self.status_code = 200
        self.headers = Headers()
        self.cookies: list[Cookie] = []

    def set_cookie(self, key: str, value: str, **options: Any) -> None:
        """Add a cookie; options are those of `Cookie` (max_age, path, secure, httponly, ...)."""
        self.cookies.append(Cookie(key, value, **options))

    def render(self) -> tuple[int, bytes]:
        """``(status, extra header lines)``; refuses values that would break the response."""
        status = self.status_code
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"ctx.response.status_code must be an int from 200 to 599, got {status!r}")
        lines = []
        for name, value in self.headers.items():
            _check_header(name, value)
            lines.append(f"{name}: {value}\r\n")
        for cookie in self.cookies:
            value = cookie.header_value()
            _check_header("set-cookie", value)
            lines.append(f"set-cookie: {value}\r\n")
        return status, "".join(lines).encode("latin-1")


# Set by the server itself: an API may not write them twice.
_RESERVED = frozenset({"content-length", "content-type", "transfer-encoding", "connection", "date", "server"})


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.match(name) or name.lower() in _RESERVED:
        raise ValueError(f"response header name {name!r} is not allowed (a token, and not one of {sorted(_RESERVED)})")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"response header {name!r} holds a line break; header values are one line")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"response header {name!r} must be Latin-1 text") from None


class Context:
    """Per-request context; see the module docstring."""

    __slots__ = ("request", "response", "state")

    def __init__(self, request: RequestInfo | None, state: dict[str, Any]) -> None:
        self.request = request
        self.response = ResponseInfo()
        self.state = state

    @classmethod
    def for_request(cls, request: Any, state: dict[str, Any]) -> "Context":
        """A Context for one parsed HTTP request (`shmserve.http.protocol.Request`)."""
        return cls(RequestInfo(request.method, request.url, request.path, request.headers, request.body), state)

    def __repr__(self) -> str:
        return f"<Context {self.request!r} status={self.response.status_code}>"


async def run_hooks(hooks: Sequence[Callable[..., Any]], state: dict[str, Any], stop_on_error: bool) -> None:
    """Run startup or shutdown hooks in order, sync or async; a hook taking an argument gets a
    `Context` without a request. Sync hooks run on a thread, so a slow one never stalls the loop."""
    for hook in hooks:
        try:
            takes_ctx = bool(inspect.signature(hook).parameters)
        except (TypeError, ValueError):
            takes_ctx = False
        args = (Context(None, state),) if takes_ctx else ()
        try:
            if inspect.iscoroutinefunction(hook):
                await hook(*args)
            else:
                result = await asyncio.to_thread(hook, *args)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            if stop_on_error:
                raise
            log.exception("shutdown hook %s failed", getattr(hook, "__qualname__", hook))
