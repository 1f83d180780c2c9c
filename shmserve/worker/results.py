"""Results on their way to the callers: written at once, or parked until the caller frees space.

A result lands in its client's result arena, which holds what that client has not dropped yet
(leased, zero-copy results). When a client holds so much that the next result finds no room,
waiting for it inside the dispatch loop would stall every other client of the worker, so the
result is *parked* instead: the loop keeps serving the others and looks again on each pass
(every `RETRY_S` while anything is parked). A parked result that still finds no room after
`RESULT_SPACE_WAIT_S` is answered with TensorTooLarge, which tells the caller to drop leased
results sooner or to raise the runner's ``arena_mb``. A result also parks while the channel's
response ring is full of responses the client's reader has not taken (after a streaming call's
items): it is written, or given up on, only once a slot is free, never over an unread response.
One client's results keep their order: while one of them is parked, the later ones queue behind it.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from .channel import RESULT_SPACE_WAIT_S, Request, WorkerChannel

__all__ = ["ResultWriter", "RESULT_SPACE_WAIT_S", "RETRY_S"]

RETRY_S = 0.0005  # how often the loop looks for freed space while a result is parked


class _Parked:
    __slots__ = ("req", "code", "tensors", "meta", "times", "batch_size", "since")

    def __init__(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                 batch_size: int, since: float) -> None:
        self.req, self.code, self.tensors, self.meta = req, code, tensors, meta
        self.times, self.batch_size, self.since = times, batch_size, since


class ResultWriter:
    """Writes each result to its channel, parking those that find no room yet (see the module)."""

    def __init__(self) -> None:
        self.parked: dict[WorkerChannel, deque[_Parked]] = {}
        #: ids of the calls answered (written or parked) since the dispatch loop last cleared it: a batch
        #: that fails midway answers only the others, so no call gets a second answer
        self.answered: set[int] = set()

    def __bool__(self) -> bool:
        """Whether any result is parked."""
        return bool(self.parked)

    def write(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
              batch_size: int) -> None:
        """Write a result to `req`'s channel now, or park it (the post comes with the next flush)."""
        ch = req.channel
        q = self.parked.get(ch)
        if q is None:
            if ch.try_write_result(req, code, tensors, meta, times, batch_size) is not None:
                self.answered.add(id(req))
                return
            q = self.parked[ch] = deque()
        q.append(_Parked(req, code, tensors, meta, times, batch_size, time.monotonic()))
        self.answered.add(id(req))

    def retry(self, now: float) -> None:
        """Write the parked results that fit now, and fail those that waited too long."""
        for ch, q in list(self.parked.items()):
            if ch.closed:  # the caller is gone: nobody reads these
                del self.parked[ch]
                continue
            while q:
                p = q[0]
                args = (p.req, p.code, p.tensors, p.meta, p.times, p.batch_size)
                if now - p.since > RESULT_SPACE_WAIT_S and ch.response_slot_free():
                    ch.write_result(*args, wait_s=0.0)  # no room yet: answer TensorTooLarge now
                elif ch.try_write_result(*args) is None:
                    break
                q.popleft()
            if not q:
                del self.parked[ch]

    def forget(self, ch: WorkerChannel) -> None:
        """Drop the parked results of a channel whose client went away."""
        self.parked.pop(ch, None)

    def finish(self) -> None:
        """Write every parked result, waiting for room as long as each may wait (when stopping:
        nothing else is left to serve), and for response slots a little longer at most."""
        give_up = time.monotonic() + RESULT_SPACE_WAIT_S + 1.0  # a client whose reader never frees a slot
        while self.parked and time.monotonic() < give_up:
            self.retry(time.monotonic())
            for ch in self.parked:
                ch.flush()  # the caller frees space only once it sees the results before it
            if self.parked:
                time.sleep(RETRY_S)
