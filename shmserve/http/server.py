"""`HttpServer`: an `App` listening on a socket, with a once-a-second tick and graceful shutdown."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from ..config.schema import ApiServerSettings
from .app import App
from .protocol import HttpProtocol, ServerState

__all__ = ["HttpServer"]


class HttpServer:
    """Serve `app` on a listening socket until `shutdown()`.

    `settings` is the validated ``api_server`` section of the configuration: its ``http``
    limits and timeouts, and ``graceful_shutdown_timeout``.
    """

    def __init__(self, app: App, settings: ApiServerSettings | None = None) -> None:
        self.app = app
        self.settings = settings or ApiServerSettings()
        http = self.settings.http
        self.state = ServerState(http.max_body_bytes, http.max_header_bytes, http.keepalive_timeout)
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.app, self.state)

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on `sock` (already bound and listening)."""
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=sock, backlog=self.settings.http.backlog)
        self._ticker = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        self.state.tick()
        self.app.metrics.publish()
        assert self._loop is not None
        self._ticker = self._loop.call_later(1.0, self._tick)

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to `graceful_shutdown_timeout`), close connections."""
        if self._server is not None:
            self._server.close()
        self.state.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.graceful_shutdown_timeout
        while self.state.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.state.connections):
            conn.close()
            task = conn.task
            if task is not None:
                task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        self.app.metrics.publish()  # final numbers, kept by the peers' sums
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass

    @property
    def sockets(self) -> Any:
        """The listening sockets."""
        return getattr(self._server, "sockets", ())
