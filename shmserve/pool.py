"""The links of one client to the workers of its runner: attach, choose one per call, re-attach.

A `LinkPool` holds one link per worker slot of the runner (`shmserve.link`).
It attaches to every worker it can at start, picks the link of each call (the
live, healthy one with the fewest calls in flight) and re-attaches links
whose worker restarted. It does not lock: the client calls it under its lock.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import RunnerUnavailable
from .link import CONNECT_ERRORS, Decode, Done, Pending
from .shm.signal import Signal
from .shm.wire import Tensor
from .watchdog import WatchdogLimits

RECONNECT_EVERY_S = 0.05  # how often a call may try to re-attach a link that is down


class Link(Protocol):
    """What the client needs of a link (`shmserve.link.WorkerLink`, or a test's fake)."""

    index: int
    worker_pid: int
    live: bool
    last_attempt: float
    healthy_until: float  # until then `healthy` would return True without reading anything
    pending: dict[int, Pending]
    methods: dict[str, Any]
    result_arena: Any  # the response arena, where `shmserve.client.Codec` reads results

    def connect(self, slots: int, arena_bytes: int, reply: Signal, loop_wake: int | None,
                timeout: float = 10.0) -> None: ...
    def send_loop_wake(self, fd: int) -> None: ...
    def submit(self, seq: int, index: int, method: str, tensors: list[Tensor], offsets: list[int], meta: bytes,
               meta_off: int, nbytes: int, align: int, deadline: float | None,
               stream: Any = None, external: list[Any] | None = None, post: bool = True) -> Pending | None: ...
    def ring(self) -> None: ...
    def cancel(self, p: Pending) -> None: ...
    def collect(self, decode: Decode, done: Done) -> int: ...
    def healthy(self, now: float, limits: WatchdogLimits) -> bool: ...
    def alive(self) -> bool: ...
    def lease(self, block_off: int, block_len: int) -> Any: ...
    def close(self) -> list[Pending]: ...
    def close_board(self) -> None: ...


class LinkPool:
    """The links to a runner's workers (see the module docstring)."""

    def __init__(self, name: str, links: list[Link], slots: int, arena_bytes: int, watchdog: WatchdogLimits,
                 reply: Signal, loop_wake: Callable[[], int | None]) -> None:
        self.name = name
        self.links = links
        self.slots = slots
        self.arena_bytes = arena_bytes
        self.watchdog = watchdog
        self._reply = reply
        self._loop_wake = loop_wake
        self.methods: dict[str, Any] = {}  # the runner's method table, from the last attach
        self.codes: dict[str, int] = {}  # each method's index in that table (what a call's descriptor carries)

    def _try(self, link: Link, timeout: float) -> BaseException | None:
        """`link.connect`, reporting failure instead of raising (the worker may be restarting)."""
        link.last_attempt = time.monotonic()
        try:
            link.connect(self.slots, self.arena_bytes, self._reply, self._loop_wake(), timeout)
        except CONNECT_ERRORS as exc:
            return exc
        self.methods = link.methods
        self.codes = {name: int(info["index"]) for name, info in link.methods.items()}
        return None

    def connect_all(self, deadline: float) -> None:
        """Attach to every worker that answers; RunnerUnavailable when none does by `deadline`."""
        last_error: BaseException | None = None
        while True:
            for link in self.links:
                if not link.live:
                    last_error = self._try(link, max(0.1, deadline - time.monotonic())) or last_error
            if any(link.live for link in self.links):
                return
            if time.monotonic() > deadline:
                raise RunnerUnavailable(f"could not attach to any worker of runner {self.name!r}: {last_error}")
            time.sleep(0.05)

    def pick(self) -> Link:
        """The link for the next call: live, healthy, fewest calls in flight (re-attaching as it goes)."""
        best = None
        stalled = 0
        now = time.monotonic()
        for link in self.links:
            if not link.live and now - link.last_attempt > RECONNECT_EVERY_S and not link.pending:
                self._try(link, 1.0)
            if not link.live:
                continue
            if now >= link.healthy_until and not link.healthy(now, self.watchdog):
                stalled += 1  # the watchdog sees no progress: calls would only queue behind a hung method
                continue
            if best is None or len(link.pending) < len(best.pending):
                best = link
        if best is None:
            if stalled:
                raise RunnerUnavailable(
                    f"every live worker of runner {self.name!r} has made no progress for over "
                    f"{self.watchdog.not_ready_after_s:g} s (a method far past its expected time, or a stopped "
                    "process); retry shortly")
            raise RunnerUnavailable(f"no live worker of runner {self.name!r} (restarting); retry shortly")
        return best

    def reconnect(self) -> None:
        """Attach to workers whose links are down (restarted since)."""
        for link in self.links:
            if not link.live and not link.pending:
                self._try(link, 1.0)

    def announce(self, loop_wake: int) -> None:
        """Hand a new eventfd to every live worker (an event loop now reads for itself)."""
        for link in self.links:
            if link.live:
                link.send_loop_wake(loop_wake)

    def statistics(self) -> list[dict[str, Any]]:
        """Each link now: its worker slot, the worker's pid, whether it is live, its calls in flight."""
        return [{"index": link.index, "pid": link.worker_pid, "live": link.live, "in_flight": len(link.pending)}
                for link in self.links]

    def any_healthy(self) -> bool:
        """Whether some live link's worker is making progress (the watchdog's view)."""
        now = time.monotonic()
        return any(link.live and link.healthy(now, self.watchdog) for link in self.links)
