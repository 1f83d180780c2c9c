"""Swagger UI at ``/docs``, from the files of the ``swagger-ui-bundle`` package (no CDN).

Machines that serve models are often offline, so the page and its scripts come
from the installed package, never from the network. The page and the start-up
script are written here; the Swagger UI distribution files are read from disk
on their first request and kept in memory. Every URL on the page is relative,
so the UI also works behind a proxy that mounts the server under a prefix.
"""
from __future__ import annotations

import html
from pathlib import Path

from .protocol import HttpProtocol, Request

__all__ = ["DocsUI", "ASSET_PATHS"]

#: the distribution files the page loads, served under ``/docs/``
_ASSETS = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"application/javascript; charset=utf-8",
    "favicon-32x32.png": b"image/png",
    "favicon-16x16.png": b"image/png",
}
ASSET_PATHS = tuple(f"/docs/{name}" for name in (*_ASSETS, "init.js"))
_CT_HTML = b"text/html; charset=utf-8"
_ASSET_CACHE = b"cache-control: public, max-age=86400\r\n"

_INIT_JS = b"""window.onload = function () {
  window.ui = SwaggerUIBundle({url: "docs.json", dom_id: "#swagger-ui", deepLinking: true,
                               presets: [SwaggerUIBundle.presets.apis]});
};
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - API documentation</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="docs/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""


def bundle_dir() -> Path | None:
    """Where the installed ``swagger-ui-bundle`` keeps Swagger UI's files (None if not installed)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


class DocsUI:
    """The ``/docs`` page and its assets for one service."""

    def __init__(self, title: str) -> None:
        self.page = _PAGE.format(title=html.escape(title)).encode()
        self._cache: dict[str, tuple[bytes, bytes]] = {"init.js": (b"application/javascript; charset=utf-8", _INIT_JS)}

    def asset(self, name: str) -> tuple[bytes, bytes] | None:
        """``(content type, bytes)`` of the asset `name`, or None when it is unknown or not installed."""
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        ctype = _ASSETS.get(name)
        where = bundle_dir()
        if ctype is None or where is None:
            return None
        try:
            data = (where / name).read_bytes()
        except OSError:
            return None
        self._cache[name] = (ctype, data)
        return ctype, data

    # -- server endpoints (``/docs`` and ``/docs/<asset>``) ----------------------
    def serve_page(self, request: Request, conn: HttpProtocol) -> None:
        """Answer ``GET /docs``."""
        conn.reply(200, _CT_HTML, self.page)

    def serve_asset(self, request: Request, conn: HttpProtocol) -> None:
        """Answer ``GET /docs/<asset>`` (cached by browsers for a day)."""
        found = self.asset(request.path[len(b"/docs/"):].decode("latin-1"))
        if found is None:
            conn.reply_error(404, "NotFound", "Swagger UI's files are not installed; pip install swagger-ui-bundle")
            return
        conn.reply(200, found[0], found[1], _ASSET_CACHE)
