"""When a runner call is due: its timeout, the runner's default, and the deadline of the request it serves.

Both backends use it: the shared-memory client (`shmserve.client`) and the
in-process one (`shmserve.local`), so a call bounds the same way wherever the
runner runs. `LoopDeadlines` keeps the deadlines of the calls awaited on one
event loop behind one timer.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from contextvars import ContextVar
from heapq import heapify, heappop, heappush
from typing import Any

__all__ = ["request_deadline", "call_deadline", "LoopDeadlines"]

#: The deadline (CLOCK_MONOTONIC seconds) of the request being served in this context, if any: an
#: API with a ``timeout`` sets it (`shmserve.http.app`), and every runner call made for the request
#: is then due by it, whatever its own timeout.
request_deadline: ContextVar[float | None] = ContextVar("shmserve_request_deadline", default=None)


def call_deadline(timeout: float | None, default: float | None = None) -> float | None:
    """When a call made now is due: `timeout`, else `default`, and never past the request's deadline."""
    if timeout is None:
        timeout = default
    deadline = time.monotonic() + timeout if timeout is not None else None
    scope = request_deadline.get()
    if scope is not None and (deadline is None or scope < deadline):
        deadline = scope
    return deadline


class LoopDeadlines:
    """The deadlines of the calls awaited on one event loop, kept by one timer.

    A timer per call (``loop.call_later``) costs a handle, a context copy and a
    cancellation on the loop's own heap for every call, though nearly every call
    ends long before its deadline. Here a call costs one ``heappush``: one timer
    is armed for the earliest deadline, and when it fires, the calls past due
    that still wait are handed to `expire`, and the timer is armed again for the
    next deadline.

    An item is a call with a ``future`` attribute: it still waits while that is
    set and not done (its caller sets it to None when it stops waiting, so a
    finished call's result is not kept). Entries of finished calls stay in the
    heap until their deadline passes or the heap is compacted, which happens
    when it has grown to twice its size after the last compaction, so it holds
    at most about twice the calls in flight. Used on the loop's thread only.
    """

    __slots__ = ("loop", "expire", "heap", "armed_at", "handle", "compact_at")

    COMPACT_MIN = 256

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[Any], None]) -> None:
        self.loop = loop
        self.expire = expire
        self.heap: list[tuple[float, int, Any]] = []
        self.armed_at = math.inf  # the deadline the timer is armed for (inf: not armed)
        self.handle: asyncio.TimerHandle | None = None
        self.compact_at = self.COMPACT_MIN

    @classmethod
    def of(cls, timers: dict[asyncio.AbstractEventLoop, "LoopDeadlines"], loop: asyncio.AbstractEventLoop,
           expire: Callable[[Any], None]) -> "LoopDeadlines":
        """The deadlines of `loop` in `timers` (one per loop), made on first use; those of closed
        loops are dropped (their timers went with them)."""
        for old in list(timers):  # a copy: another thread's loop may add its own meanwhile
            if old.is_closed():
                timers.pop(old, None)
        made = timers[loop] = cls(loop, expire)
        return made

    def add(self, deadline: float, seq: int, item: Any) -> None:
        """Watch `item`, due at `deadline` (monotonic seconds); `seq` orders equal deadlines."""
        heap = self.heap
        heappush(heap, (deadline, seq, item))
        if deadline < self.armed_at:
            self._arm(deadline)
        if len(heap) > self.compact_at:
            self._compact()

    def _arm(self, deadline: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = deadline
        self.handle = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self.handle = None
        self.armed_at = math.inf
        heap = self.heap
        now = time.monotonic()
        due = []
        while heap and heap[0][0] <= now:
            item = heappop(heap)[2]
            fut = item.future
            if fut is not None and not fut.done():
                due.append(item)
        while heap and _finished(heap[0][2]):
            heappop(heap)  # no need to wake for calls that ended
        if heap:
            self._arm(heap[0][0])
        for item in due:
            self.expire(item)

    def _compact(self) -> None:
        heap = [e for e in self.heap if not _finished(e[2])]
        heapify(heap)
        self.heap = heap
        self.compact_at = max(self.COMPACT_MIN, 2 * len(heap))

    def __len__(self) -> int:
        return len(self.heap)


def _finished(item: Any) -> bool:
    fut = item.future
    return fut is None or bool(fut.done())
