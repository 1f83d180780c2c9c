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

import math
import traceback
from collections import deque
from typing import Any

from ..batching import BatchPolicy
from ..runnable import MethodSignature
from ..shm.message import KIND_RAW
from ..shm.wire import Status
from .channel import Request

__all__ = ["MethodSlot", "Refused", "expired_reason", "file_calls", "still_wanted"]

#: a call turned away while it was filed: (call, status, error type, message, traceback)
Refused = tuple[Request, int, str, str, str]


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


def still_wanted(batch: list[Request], now: float, finish: float) -> tuple[list[Request], list[tuple[Request, str]]]:
    """The calls of `batch` to run (in order), and those that must not, with `expired_reason`'s
    reason: one read of each call's deadline, channel state and cancel word."""
    live: list[Request] = []
    dead: list[tuple[Request, str]] = []
    for r in batch:
        deadline = r.deadline
        if (deadline and deadline <= finish) or r.channel.abandoned(r):
            why = expired_reason(r, now, finish)
            if why is not None:
                dead.append((r, why))
                continue
        live.append(r)
    return live, dead


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
        #: no queued call is due before this (it may be earlier than the earliest still queued: `prune`
        #: scans a queue only when a deadline may fall before its next batch completes)
        self.earliest = math.inf

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

    def admit(self, calls: list[tuple[Request, Any]], now: float, refused: list[Refused]) -> None:
        """Queue each (call, batch key) in order, unless `refusal` turns it away (appended to
        `refused`), and record the queued joinable calls' arrivals with the policy at once.

        The same decisions as `refusal` then `push` call by call: admission reads the cost model
        and the queued count (kept up to date call by call here), never the arrival model, which no
        decision reads before the dispatch loop's next `BatchPolicy.decide`."""
        queues = self.queues
        cost = self.policy.cost
        known = cost.known
        mbs = self.max_batch_size
        full_cost, fixed, per_item = cost.estimate(mbs), cost.fixed, cost.per_item
        times: list[float] = []
        sizes: list[int] = []
        queued, earliest = self.queued, self.earliest
        for req, key in calls:
            deadline = req.deadline
            if key is not None:
                items = req.items
                if deadline and known:  # `refusal`, with `expected_wait` written out
                    full, rest = divmod(max(0, queued) + max(0, items), mbs)
                    wait = (full * full_cost + (fixed + per_item * rest if rest else 0.0)) * (1.0 + ADMISSION_MARGIN)
                    if not now + wait <= deadline:
                        self.queued = queued
                        refused.append((req, Status.OVERLOADED, "RunnerOverloaded", self.refusal(req, key, now) or "", ""))
                        continue
                queued += items
                times.append(req.submit)
                sizes.append(items)
            if deadline and deadline < earliest:
                earliest = deadline
            q = queues.get(key)
            if q is None:
                q = queues[key] = deque()
            q.append(req)
        self.queued, self.earliest = queued, earliest
        if times:
            self.policy.on_arrivals(times, sizes)

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
        if req.deadline and req.deadline < self.earliest:
            self.earliest = req.deadline
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
        if self.earliest > finish:
            return []  # no deadline queued falls before the next batch would complete: nothing to scan
        dead = [(r, why) for r in q if r.deadline and r.deadline <= finish
                and (why := expired_reason(r, now, finish)) is not None]
        if dead:
            gone = {id(r) for r, _ in dead}
            kept = [r for r in q if id(r) not in gone]
            q.clear()
            q.extend(kept)
            if key is not None:
                self.queued -= sum(r.items for r, _ in dead)
        if len(self.queues) == 1:  # this queue holds every queued call: its earliest deadline is exact
            self.earliest = min([r.deadline for r in q if r.deadline], default=math.inf)
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
        self.earliest = math.inf


def batch_key(m: MethodSlot, req: Request) -> tuple[Any, str | None]:
    """The batch key of `req` for method `m` (None: it runs alone), setting ``req.items``; or the
    reason it is refused (InvalidInput). Calls join only with calls of the same non-tensor
    arguments, dtypes and trailing shapes."""
    sig = m.sig
    tensors = req.tensors
    if not (sig.batchable and tensors):
        return None, None  # not joinable: runs alone, in arrival order
    dim = sig.input_dim
    if len(tensors) == 1:  # the common case, without the loops below
        t = tensors[0]
        if t.kind == KIND_RAW:
            return None, None  # bytes/images run alone
        shape = t.shape
        if len(shape) <= dim:
            return None, _mixed(sig, dim, tensors)
        items = req.items = shape[dim]
        sig_key: Any = ((t.dtype, shape[:dim] + shape[dim + 1:], t.kind),)
    else:
        if any(t.kind == KIND_RAW for t in tensors):
            return None, None
        try:
            sizes = {t.shape[dim] for t in tensors}
        except IndexError:  # a tensor without the batch dim
            sizes = set()
        if len(sizes) != 1:
            return None, _mixed(sig, dim, tensors)
        items = req.items = tensors[0].shape[dim]
        sig_key = tuple([(t.dtype, t.shape[:dim] + t.shape[dim + 1:], t.kind) for t in tensors])
    if items == 0:
        if not sig.accepts_empty:
            return None, sig.empty_call_error([t.shape for t in tensors])
        return None, None  # served alone: never joined, and it teaches the batching policy nothing
    return (req.meta, sig_key), None


def _mixed(sig: MethodSignature, dim: int, tensors: list[Any]) -> str:
    return (f"method {sig.name!r} batches along dim {dim}: every tensor argument needs that "
            f"dim with the same size, got shapes {[t.shape for t in tensors]}")


def file_calls(methods: list[MethodSlot], reqs: list[Request], now: float, busy: dict[int, MethodSlot],
               refused: list[Refused]) -> None:
    """Queue a channel's new calls (read together at `now`) under their methods and batch keys:
    calls of an unknown method, with inputs that cannot be batched, already expired or given up on
    (the cancel word as it read: ``Request.cancelled``), or refused at admission go to `refused`
    instead. A method that gets its first queued call is added to `busy`, in arrival order."""
    per: dict[int, list[tuple[Request, Any]]] = {}
    for req in reqs:
        if req.method >= len(methods):
            refused.append((req, Status.BAD_REQUEST, "BadRequest", f"unknown method index {req.method}", ""))
            continue
        m = methods[req.method]
        try:
            key, why = batch_key(m, req)
        except Exception as exc:  # a descriptor this code cannot file: fail the call, not the worker
            refused.append((req, Status.BAD_REQUEST, "InvalidInput", f"the call could not be queued: {exc}",
                            traceback.format_exc()))
            continue
        if why is not None:
            refused.append((req, Status.BAD_REQUEST, "InvalidInput", why, ""))
            continue
        deadline = req.deadline
        if (deadline and deadline <= now) or req.cancelled or req.channel.closed:
            refused.append((req, Status.EXPIRED, "RunnerTimeout", expired_reason(req, now) or
                            "the caller gave up on the call (timed out or disconnected) before it ran", ""))
            continue
        calls = per.get(m.index)
        if calls is None:
            calls = per[m.index] = []
        calls.append((req, key))
    for index, calls in per.items():
        m = methods[index]
        was_idle = not m.queues
        m.admit(calls, now, refused)
        if was_idle and m.queues:
            busy[index] = m
