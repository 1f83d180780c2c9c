"""The client's side of one runner worker: the channel it created, and its calls in flight.

A `WorkerLink` owns a channel segment (request/response rings and arenas),
the Unix socket of the attach handshake (also how the worker's death is
noticed) and the worker's doorbell. `Pending` is one call in flight on it.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from .errors import RunnerError, RunnerUnavailable, ShmserveError, from_wire
from .shm import handshake
from .shm.channel import ChannelView
from .shm.health import HealthBoard
from .shm.ring import BLOCK_FREE, BLOCK_HEADER, U64, ChannelLayout, RingAllocator
from .shm.segment import Segment
from .shm.signal import Signal
from .shm.wire import Status
from .traces import call_traces
from .watchdog import Health, WatchdogLimits

if TYPE_CHECKING:
    from .client import RunnerClient


class Pending:
    """One call in flight."""

    __slots__ = ("seq", "link", "slot", "block", "method", "submit", "done", "result", "error", "lock", "future",
                 "loop", "abandoned", "sink", "stream")

    def __init__(self, seq: int, link: "WorkerLink", slot: int, block: list[int], method: str, submit: float) -> None:
        self.seq = seq
        self.link = link
        self.slot = slot  # byte offset of its request descriptor (where a cancel is marked)
        self.block = block
        self.method = method
        self.submit = submit
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.lock: Any = None
        self.future: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.abandoned = False
        self.stream: Any = None  # a streaming call's sink, called with (item, error, ended) from any thread
        self.sink: list[tuple[str, str, dict[str, float]]] | None = call_traces.get()


HEALTH_EVERY_S = 0.05  # how long a reading of the worker's health board is reused


class WorkerLink:
    """This process's connection to one runner worker."""

    def __init__(self, client: "RunnerClient", index: int, socket_path: str, health_name: str | None = None) -> None:
        self.client = client
        self.board: HealthBoard | None = None  # the worker slot's watchdog board (kept across restarts)
        if health_name:
            try:
                self.board = HealthBoard.attach(health_name)
            except Exception:  # gone already (the runner stopped), or foreign: judged healthy
                self.board = None
        self._health_at = -1.0
        self._healthy = True
        self.index = index
        self.socket_path = socket_path
        self.sock: socket.socket | None = None
        self.segment: Segment | None = None
        self.view: ChannelView | None = None
        self.doorbell: Signal | None = None
        self.worker_pid = 0
        self.live = False
        self.req_head = 0
        self.resp_tail = 0
        self.requests: RingAllocator | None = None
        self.pending: dict[int, Pending] = {}
        self.last_attempt = 0.0
        self.methods: dict[str, Any] = {}

    def connect(self, slots: int, arena_bytes: int, timeout: float = 10.0) -> None:
        """Create this link's channel and attach the worker to it."""
        chan = ChannelLayout(slots, arena_bytes, arena_bytes)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        segment = None
        try:
            sock.connect(self.socket_path)
            segment = Segment.create(chan.total)
            chan.write_header(memoryview(segment.buf))
            handshake.send(sock, {"segment": segment.name, "signal": self.client.reply.name, "pid": os.getpid()})
            answer = handshake.receive(sock)
            if not answer.get("ok"):
                raise RunnerUnavailable(f"runner {self.client.name!r} worker {self.index} refused the channel: {answer.get('error')}")
            doorbell = Signal.open(answer["doorbell"])
        except BaseException:
            sock.close()
            if segment is not None:
                segment.unlink()
                segment.close()
            raise
        finally:
            if segment is not None:
                segment.unlink()  # both sides have it mapped: the name is no longer needed
        sock.setblocking(False)
        self.sock = sock
        self.segment = segment
        self.view = ChannelView(segment, chan)
        self.doorbell = doorbell
        self.worker_pid = int(answer["pid"])
        self.methods = answer["methods"]
        self.requests = RingAllocator(arena_bytes)
        self.req_head = 0
        self.resp_tail = 0
        self.live = True
        if self.client.loop_wake is not None:
            self.send_loop_wake(self.client.loop_wake)

    def try_connect(self, slots: int, arena_bytes: int, timeout: float) -> BaseException | None:
        """`connect`, reporting failure instead of raising (the worker may be restarting)."""
        self.last_attempt = time.monotonic()
        try:
            self.connect(slots, arena_bytes, timeout)
        except (OSError, ShmserveError, ValueError) as exc:
            return exc
        self.client.methods = self.methods
        return None

    def send_loop_wake(self, fd: int) -> None:
        """Give the worker an eventfd to signal along with the reply semaphore (SCM_RIGHTS)."""
        if self.sock is not None:
            try:
                self.sock.setblocking(True)
                socket.send_fds(self.sock, [b"W"], [fd])
            except OSError:
                pass  # a dead worker: noticed by the liveness check
            finally:
                self.sock.setblocking(False)

    def healthy(self, now: float, limits: WatchdogLimits) -> bool:
        """Whether the watchdog's board shows the worker making progress (True when there is no board)."""
        if self.board is None:
            return True
        if now - self._health_at > HEALTH_EVERY_S:
            self._health_at = now
            self._healthy = self.board.judge(now, limits) is Health.OK
        return self._healthy

    def close_board(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None

    def worker_alive(self) -> bool:
        """False once the worker's end of the socket is closed (it exited or was killed)."""
        sock = self.sock
        if sock is None:
            return False
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(data)

    def close(self) -> None:
        self.live = False
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.doorbell is not None:
            self.doorbell.close()
            self.doorbell = None
        if self.view is not None:
            try:
                self.view.release()
            except BufferError:
                pass  # leased results still point into the segment
            self.view = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None


def free_block(arena: memoryview, block_off: int, block_len: int = BLOCK_HEADER) -> None:
    """Hand a result block back to the worker (it reclaims it when it next allocates)."""
    if not block_len:
        return  # the response had no block
    try:
        U64.pack_into(arena, block_off, BLOCK_FREE)
    except (ValueError, TypeError):
        pass  # the link was closed (a lease outlived it): the worker is gone and nobody reclaims the arena


_STATUS_CODES = frozenset(s.value for s in Status)


def remote_error(runner: str, method: str, code: int, meta: bytes) -> BaseException:
    """The exception a failed response stands for, with the worker's message (and traceback)."""
    try:
        info = orjson.loads(meta)
    except ValueError:
        info = {"type": "Error", "message": meta.decode(errors="replace"), "traceback": ""}
    message = info.get("message", "")
    if code == Status.MODEL_ERROR:
        return RunnerError(f"{runner}.{method} raised {info.get('type')}: {message}", info.get("type", ""),
                           info.get("traceback", ""))
    name = Status(code).name if code in _STATUS_CODES else ""  # a status from a newer worker: RunnerError
    return from_wire(name, f"{runner}.{method}: {message}")

