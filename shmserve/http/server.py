"""`HttpServer`: an `App` listening on a socket, with a once-a-second tick and graceful shutdown."""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from .app import App
from .protocol import HttpProtocol, ServerState

__all__ = ["HttpConfig", "HttpServer"]


@dataclass(frozen=True)
class HttpConfig:
    """Limits and timeouts of the HTTP server."""

    #: largest request body accepted; larger ones get 413 and the connection closes
    max_body_bytes: int = 64 * 1024 * 1024
    #: largest request line plus headers; larger ones get 431
    max_header_bytes: int = 64 * 1024
    #: seconds an idle keep-alive connection stays open
    keepalive_timeout: float = 5.0
    #: seconds in-flight requests get to finish on shutdown
    graceful_timeout: float = 30.0
    #: listen backlog for sockets this server creates
    backlog: int = 2048


class HttpServer:
    """Serve `app` on a listening socket until `shutdown()`."""

    def __init__(self, app: App, config: HttpConfig | None = None) -> None:
        self.app = app
        self.config = config or HttpConfig()
        self.state = ServerState(self.config.max_body_bytes, self.config.max_header_bytes, self.config.keepalive_timeout)
        self._server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.app, self.state)

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on `sock` (already bound and listening)."""
        loop = self._loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=sock, backlog=self.config.backlog)
        self._ticker = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        self.state.tick()
        self.app.metrics.publish()
        assert self._loop is not None
        self._ticker = self._loop.call_later(1.0, self._tick)

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to `graceful_timeout`), close connections."""
        if self._server is not None:
            self._server.close()
        self.state.begin_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
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
