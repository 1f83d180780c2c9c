"""Who reads the responses of a client, and how each result reaches its caller.

Every worker of a runner posts one *reply* semaphore of the client's process
when it publishes responses (and signals an eventfd, once an event loop
listens). `Delivery` decides which reader takes each wake-up:

* a synchronous caller becomes the *leader* and waits on the semaphore itself
  when no other thread reads (no thread hand-off on the fast path), polling
  briefly first; other synchronous callers wait on a lock of their own and
  are woken by the leader, one of them taking over when it leaves;
* the first event loop that calls ``async_run`` reads results itself, woken
  by the eventfd (`listen_on`), so its results need no thread hop;
* one *completion thread*, started by the first async or streaming call,
  serves every other loop and stream, resolving futures in batches with
  ``loop.call_soon_threadsafe``. While the listening loop can serve every
  caller alone (no synchronous follower waits, and for `ACTIVE_S` no call
  came that only the thread serves: another loop's, a stream's, a new
  worker link's first ones, which may be answered before the worker has the
  eventfd), the thread stays off the semaphore and only checks liveness
  every `POLL_S`: racing the loop for each wake-up, it won most of them
  (about 85% in a ``grpc.aio`` server) and handed the loop's own results
  back to it with ``call_soon_threadsafe``, a thread hop and a GIL hand-off
  per call.

Whoever reads calls `gather`, given by the client: it collects what every link
has and, when asked, fails the calls of workers that died. `deliver` then
hands each (call, result, error) to whoever waits for it.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .link import Done, Pending
from .shm.signal import Signal, Spinner, spin_budget_s

POLL_S = 0.1  # a reader's wake-up period: liveness checks of workers with calls in flight
FOLLOWER_WAIT_S = 0.05  # how often a waiting follower checks whether the leader left
ACTIVE_S = 1.0  # how long the completion thread reads every wake-up after a call only it serves

#: ``gather(done, check)``: collect completed calls into `done`; with `check`, also fail those of dead workers
Gather = Callable[[Done, bool], None]


class Delivery:
    """The readers of one client's responses and the hand-off of results to their callers."""

    def __init__(self, name: str, gather: Gather) -> None:
        self.name = name
        self._gather = gather
        self.reply = Signal.create()  # posted by every worker of the runner
        self._spinner = Spinner(spin_budget_s())  # the sync leader's waits: results of fast calls come in µs
        self._lock = threading.Lock()  # followers and the listening loop
        self._reader = threading.Lock()  # held by the one thread reading responses
        self._followers: list[Pending] = []
        self._last_check = 0.0
        self.thread: threading.Thread | None = None
        # An eventfd the workers also signal, read by the first event loop that calls async_run: its
        # results are then delivered on the loop itself, without the completion thread's hop.
        self.loop_wake: int | None = None
        self.wake_loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.active_s = ACTIVE_S
        self._active_until = 0.0  # until then the completion thread reads every wake-up (`want_thread`)
        self._demand = threading.Event()  # wakes a standing-by completion thread

    # -- synchronous callers --------------------------------------------------------------------
    def wait(self, p: Pending, deadline: float | None) -> bool:
        """Wait until call `p` is done (True) or `deadline` passes (False), reading as the leader when
        no other thread reads."""
        try:
            while not p.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self.thread is None and self._reader.acquire(False):  # without blocking
                    try:
                        while not p.done:
                            remaining = None if deadline is None else deadline - time.monotonic()
                            if remaining is not None and remaining <= 0:
                                break
                            self.poll(POLL_S if remaining is None else min(POLL_S, remaining), self._spinner)
                    finally:
                        self._reader.release()
                        if self._followers:  # the common case, read without the lock: none
                            self._wake_a_follower()
                    continue
                # Follower: wait to be woken with the result, or to take over as leader.
                if p.lock is None:
                    p.lock = threading.Lock()
                    p.lock.acquire()
                    with self._lock:
                        self._followers.append(p)
                    self._demand.set()  # a standing-by completion thread reads again
                    if p.done:
                        break
                p.lock.acquire(timeout=FOLLOWER_WAIT_S if remaining is None else min(FOLLOWER_WAIT_S,
                                                                                     max(remaining, 0.0)))
        finally:
            if p.lock is not None:
                with self._lock:
                    if p in self._followers:
                        self._followers.remove(p)
        return True

    def _wake_a_follower(self) -> None:
        # called when `_followers` was seen non-empty without the lock: a new follower re-checks p.done
        with self._lock:
            waiting = [f for f in self._followers if not f.done]
        if waiting:
            _unlock(waiting[0].lock)

    def wait_for_space(self) -> None:
        """Let whoever reads responses make progress (they free arena space); read if nobody does."""
        if self._reader.acquire(timeout=0.001):
            try:
                self.poll(0.001)
            finally:
                self._reader.release()

    # -- event loops and the completion thread ----------------------------------------------------
    def listen_on(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """Read results on `loop` when a worker signals the eventfd, if no other live loop does.
        Returns the eventfd when this made it (the links must hand it to their workers)."""
        with self._lock:
            if self.wake_loop is not None and not self.wake_loop.is_closed():
                return None  # another live loop listens; this one is served by the completion thread
            self.wake_loop = loop
            made = None
            if self.loop_wake is None:
                self.loop_wake = made = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        loop.add_reader(self.loop_wake, self._on_loop_wake)
        return made

    def _on_loop_wake(self) -> None:
        try:
            os.eventfd_read(self.loop_wake)  # type: ignore[arg-type]
        except (BlockingIOError, OSError, TypeError):
            pass
        done: Done = []
        self._gather(done, False)
        if done:
            self.deliver(done, here=self.wake_loop)

    def ensure_thread(self) -> None:
        """Start the completion thread, if it is not running (the first async or streaming call), and
        have it read every wake-up for the next `active_s` (see `want_thread`)."""
        self.want_thread()
        if self.thread is None:
            with self._lock:
                if self.thread is None:
                    t = threading.Thread(target=self._completion_loop, name=f"shmserve-{self.name}", daemon=True)
                    self.thread = t
                    t.start()

    def want_thread(self) -> None:
        """A call is coming that the listening loop may not serve (another loop's or a stream's, or the
        first ones over a new link): the completion thread reads every wake-up for `active_s`."""
        self._active_until = time.monotonic() + self.active_s
        self._demand.set()

    def link_wake(self) -> int | None:
        """The eventfd a newly connected link hands its worker; until the worker has it, only the
        semaphore tells of its results, so the completion thread reads for a while."""
        if self.thread is not None:
            self.want_thread()
        return self.loop_wake

    def _loop_serves_all(self) -> bool:
        loop = self.wake_loop
        return (loop is not None and not self._followers and time.monotonic() >= self._active_until
                and not loop.is_closed())

    def _completion_loop(self) -> None:
        with self._reader:
            while not self.closed:
                if not self._loop_serves_all():
                    self.poll(POLL_S)
                    continue
                # Stand by: the loop reads every result itself. Check liveness (and keep the semaphore,
                # posted at every flush, from growing without bound) once every POLL_S.
                self._demand.wait(POLL_S)
                self._demand.clear()
                if self.closed or not self._loop_serves_all():
                    continue
                if self.reply.value():
                    self.reply.drain()
                done: Done = []
                self._last_check = time.monotonic()
                self._gather(done, True)
                if done:
                    self.deliver(done)

    def poll(self, timeout: float, spinner: Spinner | None = None) -> None:
        """Wait up to `timeout` for results and deliver everything that arrived (reader only).

        Only a synchronous caller passes `spinner`: it has nothing else to do while it waits, unlike
        the completion thread, whose polling would contend for the GIL with the event loop.
        """
        got = spinner.wait(self.reply, timeout) if spinner is not None else self.reply.wait(timeout)
        if got and self.reply.value():
            self.reply.drain()
        done: Done = []
        now = time.monotonic()
        check = not got or now - self._last_check > POLL_S
        if check:
            self._last_check = now
        self._gather(done, check)
        if done:
            self.deliver(done)

    def deliver(self, done: Done, here: asyncio.AbstractEventLoop | None = None) -> None:
        """Hand results to their callers; `here` is the loop this runs on, if any (no thread hop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] | None = None
        for p, result, error in done:
            if p.stream is None:  # a stream's sink carries its end: on p, an error would be in a cycle
                p.result, p.error = result, error  # with the consumer's frames (see RunnerClient.async_call)
            p.done = True
            if p.stream is not None:
                p.stream((None, error, True))  # after its items: the same sink, the same hop
                continue
            if p.future is not None and p.loop is not None:
                if by_loop is None:
                    by_loop = {}  # made only for futures: a synchronous caller's results need none
                by_loop.setdefault(p.loop, []).append((p.future, result, error))
            elif p.lock is not None:
                _unlock(p.lock)
        if by_loop is None:
            return
        for loop, items in by_loop.items():
            if loop is here:
                settle_many(items)
                continue
            try:
                loop.call_soon_threadsafe(settle_many, items)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more

    def statistics(self) -> dict[str, Any]:
        """The readers now: how many synchronous callers wait as followers, whether the completion
        thread runs, whether an event loop reads for itself."""
        return {"followers": len(self._followers), "completion_thread": self.thread is not None,
                "loop_reader": self.wake_loop is not None and not self.wake_loop.is_closed()}

    # -- lifetime ------------------------------------------------------------------------------------
    def stop_thread(self) -> None:
        """Stop the completion thread (the client is closing)."""
        self.closed = True
        self._demand.set()
        try:
            self.reply.post()  # wake the completion thread so it sees `closed`
        except Exception:
            pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=2.0)

    def close(self) -> None:
        """Remove the semaphore and the eventfd (after `stop_thread` and the last `deliver`).

        A synchronous leader may still wait on the semaphore: it is woken to see its call failed,
        and the semaphore is closed only once it has let go of the reader role."""
        self.reply.post()
        reading = self._reader.acquire(timeout=2.0)
        try:
            self.reply.unlink()
            self.reply.close()
        finally:
            if reading:
                self._reader.release()
        if self.loop_wake is not None:
            loop, self.wake_loop = self.wake_loop, None
            if loop is not None and not loop.is_closed():
                try:
                    loop.remove_reader(self.loop_wake)
                except (RuntimeError, ValueError):
                    pass
            os.close(self.loop_wake)
            self.loop_wake = None


def _unlock(lock: Any) -> None:
    try:
        lock.release()
    except RuntimeError:
        pass  # already unlocked: the waiter has been woken


def settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """Resolve `fut` with `result` or `error`, unless it is done already (timed out, cancelled)."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def settle_many(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """`settle` each (future, result, error)."""
    for fut, result, error in items:
        settle(fut, result, error)
