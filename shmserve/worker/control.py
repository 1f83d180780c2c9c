"""The control thread of a runner worker: accept client channels, notice clients that left.

Sockets carry only the attach handshake (segment and semaphore names) and the
client's event-loop eventfd; no tensor and nothing from a request crosses them.
"""
from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import lease
from ..shm import handshake
from ..shm.segment import Segment, owner_lease
from ..shm.signal import Signal, unlink_semaphore
from .channel import WorkerChannel, pin_request_arena


class ControlServer(threading.Thread):
    """Accepts client channels and notices clients that went away.

    Each accepted channel is handed to `on_channel` (the dispatch loop's intake); a client that
    leaves marks its channel closed and rings `doorbell`, so the loop drops it. The handshake
    answers with `doorbell`'s name and `methods_info`; with `gpu`, each channel's request arena is
    page-locked.
    """

    def __init__(self, listener: socket.socket, doorbell: Signal, methods_info: dict[str, Any],
                 on_channel: Callable[[WorkerChannel], None], gpu: bool = False) -> None:
        super().__init__(name="shmserve-control", daemon=True)
        self.listener = listener
        self.doorbell = doorbell
        self.methods_info = methods_info
        self.on_channel = on_channel
        self.gpu = gpu
        self.sel = selectors.DefaultSelector()
        self.stop_r, self.stop_w = os.pipe()
        # Clients whose socket closed while their lease was still held (a killed process closes its
        # files one by one): (reply semaphore name, give-up time).
        self.departed: list[tuple[str, float]] = []

    def run(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.sel.register(self.stop_r, selectors.EVENT_READ, "stop")
        while True:
            for key, _ in self.sel.select(0.1 if self.departed else None):
                if key.data == "stop":
                    return
                if key.data is None:
                    self._accept()
                else:
                    self._client_event(key.fileobj, key.data)  # type: ignore[arg-type]
            if self.departed:
                self._sweep_departed()

    def _sweep_departed(self) -> None:
        """Remove the reply semaphore of each departed client once its lease is gone; a client
        that detached and lives on (or is still alive after 5 s) removes its own."""
        now = time.monotonic()
        keep = []
        for name, give_up in self.departed:
            if lease.state(owner_lease(name) or "") != lease.LIVE:
                unlink_semaphore(name)  # a killed client cannot unlink it itself
            elif now < give_up:
                keep.append((name, give_up))
        self.departed = keep

    def stop(self) -> None:
        os.write(self.stop_w, b"x")

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.settimeout(5.0)
        channel = None
        try:
            req = handshake.Attach.from_message(handshake.receive(sock))
            segment = Segment.attach(req.segment)
            try:
                reply = Signal.open(req.signal)
                channel = WorkerChannel(segment, sock, reply, req.pid)
                if self.gpu:
                    channel.pinned = pin_request_arena(channel)
            except BaseException:
                segment.close()
                raise
            handshake.send(sock, handshake.Attached(self.doorbell.name, os.getpid(), self.methods_info).to_message())
        except Exception as exc:
            try:
                handshake.send(sock, handshake.Refused(f"{type(exc).__name__}: {exc}").to_message())
            except OSError:
                pass
            sock.close()
            if channel is not None:
                channel.close()
            return
        sock.setblocking(False)
        self.sel.register(sock, selectors.EVENT_READ, channel)
        self.on_channel(channel)

    def _client_event(self, sock: socket.socket, channel: WorkerChannel) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 64, 4)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        for fd in fds[1:]:
            os.close(fd)
        if fds:
            if data.startswith(handshake.CTL_LOOP_WAKE):  # the client's event loop wake-up eventfd
                channel.set_loop_wake(fds[0])
            else:
                os.close(fds[0])
        if not data:  # the client closed its end: it exited or detached
            self.sel.unregister(sock)
            channel.closed = True
            self.doorbell.post()
            self.departed.append((channel.reply.name, time.monotonic() + 5.0))
            self._sweep_departed()
