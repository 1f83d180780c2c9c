"""`HttpServer`: an `App` listening on a socket, with a periodic tick and graceful shutdown."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from ..config.schema import ApiServerSettings
from ..errors import ConfigError
from .app import App
from .protocol import HttpProtocol, ServerState
from .state import TICK_S

__all__ = ["HttpServer", "bind_tcp", "server_state"]

log = logging.getLogger("shmserve.http")


def bind_tcp(host: str, port: int, option: int, failure: str, fix: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` with socket `option` set (``SO_REUSEADDR`` or ``SO_REUSEPORT``).

    A port that cannot be bound is a `ConfigError` reading ``"<failure> host:port: <why>; <fix>"``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{failure} {host}:{port}: {exc.strerror}; {fix}") from None
    return sock


def server_state(settings: ApiServerSettings) -> ServerState:
    """A `ServerState` with the limits and timeouts of ``api_server.http``."""
    http = settings.http
    return ServerState(
        max_body_bytes=http.max_body_bytes, max_header_bytes=http.max_header_bytes,
        keepalive_timeout=http.keepalive_timeout, max_url_bytes=http.max_url_bytes,
        header_timeout=http.header_timeout, body_timeout=http.body_timeout, send_timeout=http.send_timeout,
        max_connections=http.max_connections,
    )


class HttpServer:
    """Serve `app` on a listening socket until `shutdown()`.

    `settings` is the validated ``api_server`` section of the configuration: its ``http``
    limits and timeouts, and ``graceful_shutdown_timeout``.
    """

    def __init__(self, app: App, settings: ApiServerSettings | None = None) -> None:
        self.app = app
        self.settings = settings or ApiServerSettings()
        self.state = server_state(self.settings)
        self.state.on_response = app.on_response  # access log and spans; None while both are off
        self.state.identify = app.edge.identify  # request IDs of the answers the protocol makes itself
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks = 0

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self.app, self.state)

    async def start(self, sock: socket.socket) -> None:
        """Start accepting on `sock` (already bound and listening)."""
        loop = self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._server = await loop.create_server(self._protocol, sock=sock, backlog=self.settings.http.backlog)
        self._ticker = loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self.state.tick()
        self._ticks += 1
        if self._ticks * TICK_S >= 1.0:
            self._ticks = 0
            self.app.metrics.publish()
        assert self._loop is not None
        self._ticker = self._loop.call_later(TICK_S, self._tick)

    def stop_listening(self) -> list[asyncio.Task[Any]]:
        """Close the listening socket, first taking the connections already in its backlog.

        Those connections finished their handshake before we stopped, and their
        requests may already be in flight: they are served like the others.
        Once every process sharing the socket has called this, a new connection
        is refused at once (ECONNREFUSED) instead of waiting in a backlog that
        nobody accepts from; one whose handshake the kernel completes between
        the last accept here and the close is reset with the backlog
        (ECONNRESET), as on any server that closes its listener: it came after
        the stop. Returns the tasks that set those connections up.
        """
        taken: list[asyncio.Task[Any]] = []
        sock, server = self._sock, self._server
        self._sock = None
        if sock is not None and server is not None and sock.fileno() >= 0 and self._loop is not None:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # EMFILE and the like: what is left gets refused
                    break
                conn.setblocking(False)
                taken.append(self._loop.create_task(self._loop.connect_accepted_socket(self._protocol, conn)))
        if server is not None:
            server.close()
        if sock is not None:
            sock.close()
        return taken

    async def shutdown(self) -> None:
        """Stop accepting, answer every request already received (up to ``graceful_shutdown_timeout``), close."""
        taken = self.stop_listening()
        if taken:
            log.debug("took %d connections from the backlog before closing it", len(taken))
            await asyncio.wait(taken, timeout=1.0)
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
