"""The queues of one runner method in a worker, and admission by time.

Each method keeps one FIFO queue per *batch key* (calls that may be joined: same non-tensor
arguments, dtypes and trailing shapes; key None: calls that run alone). Every call carries the
deadline its caller stamped on it (`shmserve.client`: the call's timeout, else the API's deadline,
else the runner's default ``timeout``). Like Triton's queue policy, a call never reaches the model
after its deadline, nor after its caller gave up (the cancel word of its descriptor). Beyond
Triton's, a call is refused as soon as it arrives when the batching policy's cost model says the
calls queued ahead would not be served before its deadline: under overload the caller hears
"retry later" (HTTP 503 with Retry-After) in microseconds, instead of after its whole deadline, and
the queue never holds more work than the deadlines allow, so it drains within one deadline once
the load stops.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from ..batching import BatchPolicy
from ..runnable import MethodSignature
from .channel import Request

__all__ = ["MethodSlot", "expired_reason"]


ADMISSION_MARGIN = 0.1  # admit only when the estimated wait, plus this share of it, meets the deadline


def expired_reason(req: Request, now: float, finish: float | None = None) -> str | None:
    """Why `req` must not run any more, or None: its deadline passed (or passes before `finish`, when
    its batch would complete at the cost model's estimate: running it would be wasted), or its
    caller gave up."""
    if req.deadline and req.deadline <= (now if finish is None else finish):
        if req.deadline <= now:
            return f"the call's deadline passed {now - req.deadline:.3f} s before it could run"
        return f"the call's deadline is {req.deadline - now:.3f} s away, sooner than its batch would complete"
    if req.channel.abandoned(req):
        return "the caller gave up on the call (timed out or disconnected) before it ran"
    return None


class MethodSlot:
    """Per-method dispatch state: its function, batching policy and queues."""

    def __init__(self, index: int, sig: MethodSignature, func: Any, max_batch_size: int, max_latency_ms: float) -> None:
        self.index = index
        self.sig = sig
        self.func = func
        self.max_batch_size = max_batch_size
        self.policy = BatchPolicy(max_batch_size, max_latency_ms / 1000.0)
        self.queues: dict[Any, deque[Request]] = {}
        self.queued = 0  # items waiting in joinable queues: what admission weighs a new call against

    def refusal(self, req: Request, key: Any, now: float) -> str | None:
        """Why `req` is refused at admission (it would be served only after its deadline), or None."""
        if key is None or not req.deadline:
            return None  # calls that run alone are not in the cost model: they only expire
        wait = self.admission_wait(req.items)
        if now + wait <= req.deadline:
            return None
        return (f"runner busy: {self.queued} items are queued ahead of this call on method {self.sig.name!r}, "
                f"about {wait:.3f} s of work, and the call's deadline is {max(0.0, req.deadline - now):.3f} s "
                "away; retry later")

    def admission_wait(self, items: int) -> float:
        """Seconds a call of `items` items arriving now must have left to be admitted."""
        # The estimate counts model time only; the margin covers the loop's own time per batch.
        return self.policy.expected_wait(self.queued, items) * (1.0 + ADMISSION_MARGIN)

    def push(self, key: Any, req: Request) -> bool:
        """Queue `req` under `key`; True when this method had nothing queued before."""
        q = self.queues.get(key)
        was_idle = not self.queues
        if q is None:
            q = self.queues[key] = deque()
        q.append(req)
        if key is not None:
            self.queued += req.items
            self.policy.on_arrival(req.submit, req.items)
        return was_idle

    def take(self, key: Any, q: deque[Request], calls: int) -> list[Request]:
        """The first `calls` queued calls of `q` (the FIFO prefix the batching policy chose)."""
        batch = [q.popleft() for _ in range(calls)]
        if key is not None:
            self.queued -= sum(r.items for r in batch)
        return batch

    def prune(self, key: Any, q: deque[Request], now: float) -> list[tuple[Request, str]]:
        """Remove and return the calls of `q` whose deadline passed, or comes before the next batch
        would complete, with the reason.

        Only deadlines are compared here (cheap, once per decision over the whole queue); whether a
        caller gave up is read from its descriptor just before its batch runs (`expired_reason`).
        """
        finish = now + self.policy.cost.estimate(min(self.queued, self.max_batch_size)) if key is not None else now
        dead = [(r, why) for r in q if r.deadline and r.deadline <= finish
                and (why := expired_reason(r, now, finish)) is not None]
        if dead:
            gone = {id(r) for r, _ in dead}
            kept = [r for r in q if id(r) not in gone]
            q.clear()
            q.extend(kept)
            if key is not None:
                self.queued -= sum(r.items for r, _ in dead)
        return dead

    def forget(self, channel: Any) -> None:
        """Drop the queued calls of a channel whose client went away."""
        for q in self.queues.values():
            if any(r.channel is channel for r in q):
                kept = [r for r in q if r.channel is not channel]
                q.clear()
                q.extend(kept)
        self.queued = sum(r.items for key, q in self.queues.items() if key is not None for r in q)

    def clear(self) -> None:
        self.queues.clear()
        self.queued = 0
