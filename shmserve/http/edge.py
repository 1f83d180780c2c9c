"""What every request passes before it is routed: its ID, CORS, its API key.

`Edge.admit` gives the request its ID (`request_id`) and the response header
that echoes it, then, when enabled, adds CORS headers or answers a preflight
(`cors`) and checks the API key (`auth`). While CORS and API keys are off
(the default) that is one header lookup and one minted or accepted ID.
"""
from __future__ import annotations

from typing import Any

from ..config.schema import ApiServerSettings
from .auth import ApiKeys
from .cors import Cors, PreflightRejected, is_preflight
from .protocol import HttpProtocol, Request
from .request_id import HEADER, RequestIds

__all__ = ["Edge", "V2"]

#: `Edge.admit`'s `routed` for a path that matched no route: routed when it starts with ``/v2``
#: (checked only when CORS needs to know)
V2 = object()

_CT_TEXT = b"text/plain; charset=utf-8"
_UNAUTHORIZED = b'www-authenticate: Bearer realm="shmserve"\r\n'
_ECHO = HEADER + b": "


class Edge:
    """Request IDs, CORS and API keys of one API worker."""

    def __init__(self, settings: ApiServerSettings) -> None:
        """`settings`: the ``api_server`` section (``http.cors`` and ``auth`` are read)."""
        self.ids = RequestIds()
        self.cors = Cors(settings.http.cors) if settings.http.cors.enabled else None
        self.keys = ApiKeys(settings.auth) if settings.auth.enabled else None
        self._open = self.cors is None and self.keys is None  # then admitting is giving the ID

    def admit(self, request: Request, conn: HttpProtocol, routed: Any) -> int:
        """0 when `request` proceeds; otherwise the status it was answered with (preflight, 401).

        `routed`: whether the path names a route of this server (only those get preflight answers): a
        truth value (the route, or None), or `V2`, which stands for "when the path starts with /v2".
        """
        headers = request.headers
        # `identify`, inline: this runs for every request
        rid = request.request_id = self.ids.accept(headers.get(HEADER))
        request.response_headers = _ECHO + rid + b"\r\n"
        if self._open:
            return 0
        cors = self.cors
        if cors is not None and b"origin" in headers:
            if routed is V2:
                routed = request.path.startswith(b"/v2")
            if routed and is_preflight(request.method, headers):
                return self._preflight(cors, request, conn)
            request.response_headers += cors.response_headers(headers[b"origin"])
        if self.keys is not None and not self.keys.allows(request.path, headers):
            conn.reply_error(401, "Unauthorized", "this server needs an API key: send 'Authorization: Bearer <key>' "
                                                  "or 'X-API-Key: <key>'", _UNAUTHORIZED)
            return 401
        return 0

    def identify(self, request: Request) -> None:
        """Give `request` its ID and the header line echoing it (``ServerState.identify``: for the answers
        the protocol makes itself, which are not routed)."""
        rid = request.request_id = self.ids.accept(request.headers.get(HEADER))
        request.response_headers = _ECHO + rid + b"\r\n"

    @staticmethod
    def _preflight(cors: Cors, request: Request, conn: HttpProtocol) -> int:
        try:
            lines = cors.preflight_headers(request.headers)
        except PreflightRejected as exc:
            conn.reply_error(400, "CORSPreflightRejected", str(exc))
            return 400
        request.response_headers += lines
        conn.reply(200, _CT_TEXT, b"")
        return 200
