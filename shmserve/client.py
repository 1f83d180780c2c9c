"""The client side of the transport: calls from any process into runner workers.

A `RunnerClient` serves every thread and event loop of one process for one
runner. It keeps one *link* per runner worker (`shmserve.link`): a Unix
socket (used for the attach handshake and to notice the worker's death) and
a channel segment this process owns (request/response rings and arenas). One
response semaphore, shared by the links, wakes this process when results
arrive. Completed calls' timelines go to `shmserve.traces`.

Waiting for results: a synchronous caller becomes the *leader* and waits on
the semaphore itself when no other thread does (no thread hand-off on the
fast path), polling briefly first; other callers wait on their own lock and
are woken by the leader. The first event loop that calls `async_run` reads
results itself, woken by an eventfd the workers signal; other loops are
served by one completion thread, which resolves their futures in batches
with `loop.call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np

from . import lease, registry, traces
from .client_stream import StreamingCalls
from .deadline import LoopDeadlines, call_deadline, request_deadline  # noqa: F401  (request_deadline: public)
from .errors import (
    InvalidInput,
    RunnerOverloaded,
    RunnerTimeout,
    RunnerUnavailable,
    TensorTooLarge,
)
from .link import Pending, WorkerLink, free_block, remote_error
from .shm import ring
from .shm.message import Tensor, decode_result, encode_call, layout, view
from .shm.ring import DEFAULT_SLOTS, MAX_TENSORS, META_INLINE_MAX
from .shm.signal import Signal, Spinner, spin_budget_s
from .shm.wire import request_align
from .tensors import from_wire, numpy_dtype
from .traces import TraceHook, add_trace_hook, call_traces, remove_trace_hook  # noqa: F401  (public here too)
from .watchdog import WatchdogLimits

COPY_RESULT_MAX = 64 * 1024  # results up to this size are copied out; larger ones are leased in place
POLL_S = 0.1  # leader wake-up period: liveness checks of workers with calls in flight
RECONNECT_EVERY_S = 0.05


class RunnerClient(StreamingCalls):
    """Calls into the workers of one running runner (the shared-memory backend of a Runner)."""

    def __init__(self, name: str, connect_timeout: float = 10.0) -> None:
        self.name = name
        record = registry.lookup(name)
        self.record = record
        self.arena_bytes = int(record["arena_mb"]) * 2**20
        self.max_queue_size = int(record.get("max_queue_size", DEFAULT_SLOTS))
        #: seconds a call may take when its caller gives no timeout (the runner's ``timeout``; None: no bound)
        self.default_timeout: float | None = record.get("timeout")
        self.slots = DEFAULT_SLOTS
        self.reply = Signal.create()
        self._spinner = Spinner(spin_budget_s())  # the sync leader's waits: results of fast calls come in µs
        self._lock = threading.Lock()  # submissions, allocator and link state
        self._reader = threading.Lock()  # held by the one thread reading responses
        self._followers: list[Pending] = []
        self._seq = 0
        self._inflight = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_check = 0.0
        self._gpu: Any = None  # shmserve.gpu.HandoffLedger, created when a CUDA tensor first crosses
        # An eventfd the workers also signal, read by the first event loop that calls async_run: its
        # results are then delivered on the loop itself, without the completion thread's hop.
        self.loop_wake: int | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        # Links whose doorbell the wake loop posted this turn -> whether calls were published since
        # (those get one more post at the end of the turn).
        self._bells: dict[WorkerLink, bool] = {}
        self._timers: dict[asyncio.AbstractEventLoop, LoopDeadlines] = {}  # the call deadlines awaited per loop
        self.watchdog = WatchdogLimits.of(record.get("watchdog"))
        self.links = [WorkerLink(self, w["index"], w["socket"], w.get("health")) for w in record["workers"]]
        self.methods: dict[str, Any] = {}
        deadline = time.monotonic() + connect_timeout
        try:
            self._connect_all(deadline)
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _close_signal, self.reply)

    # -- connection management -------------------------------------------------------
    def _connect_all(self, deadline: float) -> None:
        last_error: BaseException | None = None
        while True:
            for link in self.links:
                if not link.live:
                    last_error = link.try_connect(self.slots, self.arena_bytes, max(0.1, deadline - time.monotonic())) \
                        or last_error
            if any(link.live for link in self.links):
                return
            if time.monotonic() > deadline:
                raise RunnerUnavailable(f"could not attach to any worker of runner {self.name!r}: {last_error}")
            time.sleep(0.05)

    def _pick_link(self) -> WorkerLink:
        best = None
        stalled = 0
        now = time.monotonic()
        for link in self.links:
            if not link.live and now - link.last_attempt > RECONNECT_EVERY_S and not link.pending:
                link.try_connect(self.slots, self.arena_bytes, 1.0)
            if not link.live:
                continue
            if not link.healthy(now, self.watchdog):
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

    def _fail_link(self, link: WorkerLink, why: str) -> list[tuple[Pending, Any, BaseException | None]]:
        """The worker behind `link` died: fail its calls and drop the link."""
        link.live = False
        failed = list(link.pending.values())
        link.pending.clear()
        self._inflight -= len(failed)
        err = RunnerUnavailable(f"runner {self.name!r} worker {link.index} (pid {link.worker_pid}) {why}")
        if self._gpu is not None:
            from .gpu import sweep

            sweep()  # drop CUDA exports the dead worker held
            self._gpu.forget(link.worker_pid)
        link.close()
        return [(p, None, err) for p in failed]

    # -- calls ------------------------------------------------------------------------------
    def _method_index(self, method: str) -> int:
        info = self.methods.get(method)
        if info is None:
            raise InvalidInput(f"runner {self.name!r} has no method {method!r}; it has {sorted(self.methods)}")
        return int(info["index"])

    def _deadline(self, timeout: float | None) -> float | None:
        """When a call made now is due: its timeout, else the runner's default, and never past the request's."""
        return call_deadline(timeout, self.default_timeout)

    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float | None,
                block_for_space: bool = True, stream: Any = None,
                bell_loop: asyncio.AbstractEventLoop | None = None) -> Pending:
        """Publish one call; `deadline` (monotonic seconds, None: none) travels with it to the worker.

        `stream`: the item sink of a streaming call (`shmserve.client_stream`). `bell_loop`: the wake
        loop, when the caller awaits on it (its result is read there, and the doorbell is posted once
        per turn of that loop); otherwise the caller waits on the reply semaphore."""
        if self._closed:
            raise RunnerUnavailable(f"the client of runner {self.name!r} is closed")
        index = self._method_index(method)
        hint: WorkerLink | None = None
        releases = None
        if self._gpu is not None:
            # CUDA hand-offs the chosen worker gave us and we no longer use ride back on this call.
            with self._lock:
                hint = self._pick_link()
            releases = self._gpu.owed_to(hint.worker_pid) or None
        tensors, meta = encode_call(args, kwargs, self._device, releases)
        if len(tensors) > MAX_TENSORS:
            raise InvalidInput(f"a call carries at most {MAX_TENSORS} tensor arguments, got {len(tensors)}")
        offsets, end = layout(tensors, 0)
        align = request_align(tensors)
        meta_off = (end + 7) & ~7
        nbytes = meta_off + len(meta) if len(meta) > META_INLINE_MAX else end
        if nbytes > self.arena_bytes:
            raise TensorTooLarge(
                f"input of {nbytes / 2**20:.1f} MB exceeds the {self.arena_bytes / 2**20:.0f} MB arena of runner "
                f"{self.name!r}; raise Runner(arena_mb=...) or runners.{self.name}.arena_mb in the config"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise RunnerTimeout(f"call to {self.name}.{method}: its deadline passed before it was sent")
        space_deadline = deadline or now + 30.0
        while True:
            with self._lock:
                if self._inflight >= self.max_queue_size:
                    raise RunnerOverloaded(
                        f"runner {self.name!r} has {self._inflight} calls in flight from this process "
                        f"(max_queue_size {self.max_queue_size}); retry later"
                    )
                link = hint if hint is not None and hint.live else self._pick_link()
                if deadline is not None:
                    drained_at = link.view.get_time(ring.H_DRAINED_AT)  # type: ignore[union-attr]
                    if drained_at > deadline:  # the worker would refuse it: say so without the round trip
                        raise RunnerOverloaded(
                            f"runner {self.name!r} is busy: its queue would be served in {drained_at - now:.3f} s, "
                            f"after this call's deadline ({deadline - now:.3f} s away); retry later")
                if len(link.pending) < self.slots:
                    block = link.requests.alloc(nbytes, align)  # type: ignore[union-attr]
                    if block is not None:
                        return self._publish(link, index, method, tensors, offsets, meta, meta_off, block,
                                             deadline or 0.0, stream, bell_loop)
            # The arena or ring is full: results on their way back will free space.
            if not block_for_space or time.monotonic() > space_deadline:
                raise RunnerOverloaded(f"the shared-memory arena of runner {self.name!r} stayed full; retry later")
            self._wait_for_space()

    def _device(self) -> Any:
        """The CUDA hand-off ledger of this client (imports shmserve.gpu on first use)."""
        if self._gpu is None:
            from .gpu import HandoffLedger

            self._gpu = HandoffLedger()
        return self._gpu

    def _publish(self, link: WorkerLink, index: int, method: str, tensors: list[Tensor], offsets: list[int],
                 meta: bytes, meta_off: int, block: list[int], deadline: float, stream: Any = None,
                 bell_loop: asyncio.AbstractEventLoop | None = None) -> Pending:
        v = link.view
        assert v is not None
        arena = v.req_arena
        base = block[0]
        try:
            for (arr, _kind, dtype_str), off in zip(tensors, offsets):
                dst = view(arena, base + off, arr.nbytes, dtype_str, arr.shape)
                np.copyto(dst, arr)
            if len(meta) > META_INLINE_MAX:
                arena[base + meta_off : base + meta_off + len(meta)] = meta
        except BaseException:
            link.requests.release(block)  # type: ignore[union-attr]
            raise
        seq = self._seq
        self._seq += 1
        submit = time.monotonic()
        slot = v.req_slot(link.req_head)
        v.write_desc(slot, (seq, index, base, block[1] - base, base + meta_off, submit, deadline, 0.0, 0.0, 0.0, 0),
                     tensors, [base + o for o in offsets], meta)
        link.req_head += 1
        v.set(ring.H_REQ_HEAD, link.req_head)
        p = Pending(seq, link, slot, block, method, submit)
        p.stream = stream  # set before the worker can answer
        link.pending[seq] = p
        self._inflight += 1
        bells = self._bells
        if bell_loop is not None and link in bells:
            bells[link] = True  # the post at the end of this turn covers it
        else:
            link.doorbell.post()  # type: ignore[union-attr]
            if bell_loop is not None:
                if not bells:
                    bell_loop.call_soon(self._ring_bells)
                bells[link] = False
        return p

    def _ring_bells(self) -> None:
        """End of the wake loop's turn: post once more the doorbell of each link that got calls after
        the turn's first one (posted at once, so a lone call waits for nothing). A turn that publishes
        many calls posts a link twice instead of once per call, and a sleeping worker is woken for
        the lot. On the wake loop only, so `_bells` needs no lock."""
        bells, self._bells = self._bells, {}
        for link, more in bells.items():
            bell = link.doorbell
            if more and bell is not None:
                bell.try_post()  # False: closed with its link (the worker died); its calls fail with it

    def _wait_for_space(self) -> None:
        # Let whoever reads responses make progress; take the reader role if nobody does.
        if self._reader.acquire(timeout=0.001):
            try:
                self._poll(0.001)
            finally:
                self._reader.release()

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Call `method` and wait for its result (the Backend interface)."""
        deadline = self._deadline(timeout)
        p = self._submit(method, args, kwargs, deadline)
        self._wait_sync(p, deadline)
        if p.error is not None:
            try:
                raise p.error
            finally:
                del p  # error -> traceback -> this frame -> p -> error: a cycle that held the caller's leased results
        return p.result

    async def async_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Call `method` from a coroutine; the event loop never blocks on the semaphore."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._ensure_thread()
        if self._wake_loop is not loop and (self._wake_loop is None or self._wake_loop.is_closed()):
            self._listen_on(loop)
        deadline = self._deadline(timeout)
        p = self._submit(method, args, kwargs, deadline, block_for_space=False,
                         bell_loop=loop if self._wake_loop is loop else None)
        p.loop = loop
        p.future = fut
        if p.done:  # resolved before the future was attached
            _settle(fut, p.result, p.error)
        if deadline is not None:
            # One timer per loop for every call's deadline, not a timer (or asyncio.wait_for's task) per call.
            timers = self._timers.get(loop)
            if timers is None:
                timers = self._loop_deadlines(loop)
            timers.add(deadline, p.seq, p)
        try:
            return await fut
        except asyncio.CancelledError:
            self.cancel(p)  # the caller went away (an HTTP client that hung up): the call need not run
            raise
        finally:
            # Its deadline entry may outlive the call: it keeps no result or error alive.
            p.future = p.result = p.error = None
            # A raised error's traceback holds this frame: without these, error -> traceback -> frame ->
            # fut/p -> error is a cycle only the garbage collector frees, and the frames it holds keep
            # the caller's leased results, whose blocks then fill the result arena (TensorTooLarge).
            del fut, p

    def _loop_deadlines(self, loop: asyncio.AbstractEventLoop) -> LoopDeadlines:
        with self._lock:
            for old in [lp for lp in self._timers if lp.is_closed()]:
                del self._timers[old]  # a closed loop's timer went with it
            timers = self._timers[loop] = LoopDeadlines(loop, self._expire)
        return timers

    def _expire(self, p: Pending) -> None:
        fut = p.future
        if fut is not None and not fut.done():
            self.cancel(p)
            fut.set_exception(RunnerTimeout(f"call to {self.name}.{p.method} timed out: no result by its "
                                            f"deadline ({time.monotonic() - p.submit:.3f} s after it was sent)"))

    def cancel(self, p: Pending) -> None:
        """Give up on call `p`: its result is dropped, and if it has not started it never reaches the model."""
        p.abandoned = True
        with self._lock:
            link = p.link
            if not p.done and link.live and link.view is not None and p.seq in link.pending:
                link.view.cancel(p.slot, p.seq)

    # -- waiting for results ---------------------------------------------------------------------
    def _wait_sync(self, p: Pending, deadline: float | None) -> None:
        try:
            while not p.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.cancel(p)
                    raise RunnerTimeout(f"call to {self.name}.{p.method} timed out")
                if self._thread is None and self._reader.acquire(blocking=False):
                    try:
                        while not p.done:
                            remaining = None if deadline is None else deadline - time.monotonic()
                            if remaining is not None and remaining <= 0:
                                break
                            self._poll(POLL_S if remaining is None else min(POLL_S, remaining), self._spinner)
                    finally:
                        self._reader.release()
                        self._wake_a_follower()
                    continue
                # Follower: wait to be woken with the result, or to take over as leader.
                if p.lock is None:
                    p.lock = threading.Lock()
                    p.lock.acquire()
                    with self._lock:
                        self._followers.append(p)
                    if p.done:
                        break
                p.lock.acquire(timeout=0.05 if remaining is None else min(0.05, max(remaining, 0.0)))
        finally:
            if p.lock is not None:
                with self._lock:
                    if p in self._followers:
                        self._followers.remove(p)

    def _wake_a_follower(self) -> None:
        if not self._followers:  # the common case, read without the lock: a new follower re-checks p.done
            return
        with self._lock:
            waiting = [f for f in self._followers if not f.done]
        if waiting:
            _unlock(waiting[0].lock)

    def _listen_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read results on `loop` when a worker signals its eventfd (first loop only)."""
        with self._lock:
            if self._wake_loop is not None and not self._wake_loop.is_closed():
                return  # another live loop listens; this one is served by the completion thread
            self._wake_loop = loop
            if self.loop_wake is None:
                self.loop_wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                for link in self.links:
                    if link.live:
                        link.send_loop_wake(self.loop_wake)
        loop.add_reader(self.loop_wake, self._on_loop_wake)

    def _on_loop_wake(self) -> None:
        try:
            os.eventfd_read(self.loop_wake)  # type: ignore[arg-type]
        except (BlockingIOError, OSError, TypeError):
            pass
        done: list[tuple[Pending, Any, BaseException | None]] = []
        with self._lock:
            for link in self.links:
                if link.live:
                    self._read_link(link, done)
        if done:
            self._deliver(done, here=self._wake_loop)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    t = threading.Thread(target=self._completion_loop, name=f"shmserve-{self.name}", daemon=True)
                    self._thread = t
                    t.start()

    def _completion_loop(self) -> None:
        with self._reader:
            while not self._closed:
                self._poll(POLL_S)

    def _poll(self, timeout: float, spinner: Spinner | None = None) -> None:
        """Wait up to `timeout` for results and deliver everything that arrived (reader only).

        Only a synchronous caller passes `spinner`: it has nothing else to do while it waits, unlike
        the completion thread, whose polling would contend for the GIL with the event loop.
        """
        got = spinner.wait(self.reply, timeout) if spinner is not None else self.reply.wait(timeout)
        if got and self.reply.value():
            self.reply.drain()
        done: list[tuple[Pending, Any, BaseException | None]] = []
        now = time.monotonic()
        with self._lock:
            for link in self.links:
                if link.live:
                    self._read_link(link, done)
            if not got or now - self._last_check > POLL_S:
                self._last_check = now
                for link in self.links:
                    if link.live and link.pending and not link.worker_alive():
                        done.extend(self._fail_link(link, "exited while serving this call"))
        if done:
            self._deliver(done)

    def _read_link(self, link: WorkerLink, done: list[tuple[Pending, Any, BaseException | None]]) -> None:
        v = link.view
        assert v is not None
        head = v.get(ring.H_RESP_HEAD)
        if link.resp_tail == head:
            return
        complete = time.monotonic()
        while link.resp_tail < head:
            fixed, tmetas, meta = v.read_desc(v.resp_slot(link.resp_tail), v.resp_arena)
            link.resp_tail += 1
            if fixed[1] == ring.ST_ITEM:  # one item of a streaming call: the call stays in flight
                self._stream_item(link, link.pending.get(fixed[0]), tmetas, meta, fixed[3], fixed[4])
                continue
            p = link.pending.pop(fixed[0], None)
            if p is None:  # nobody waits for it (a second answer to a call): its block goes back all the same
                free_block(v.resp_arena, fixed[3], fixed[4])
                continue
            self._inflight -= 1
            link.requests.release(p.block)  # type: ignore[union-attr]
            code, block_off, block_len = fixed[1], fixed[3], fixed[4]
            result: Any = None
            error: BaseException | None = None
            if code == ring.ST_OK:
                if p.abandoned:
                    free_block(v.resp_arena, block_off, block_len)
                else:
                    try:
                        result = self._decode(link, tmetas, meta, block_off, block_len)
                    except Exception as exc:  # a result this process cannot rebuild
                        error = InvalidInput(f"result of {self.name}.{p.method} could not be decoded: {exc}")
            else:
                error = remote_error(self.name, p.method, code, meta)
                if block_len:
                    free_block(v.resp_arena, block_off, block_len)
            if traces.wanted(p.sink):
                traces.deliver(self.name, p.method, {
                    "submit": p.submit, "dequeue": fixed[8], "batch_start": fixed[9], "model_start": fixed[10],
                    "model_end": fixed[11], "written": fixed[12], "complete": complete, "batch_size": fixed[13]}, p.sink)
            done.append((p, result, error))
        v.set(ring.H_RESP_TAIL, link.resp_tail)

    def _decode(self, link: WorkerLink, tmetas: list[Any], meta: bytes, block_off: int, block_len: int) -> Any:
        v = link.view
        assert v is not None and link.segment is not None
        if not tmetas or block_len <= COPY_RESULT_MAX:
            tensors = [from_wire(view(v.resp_arena, t.offset, t.nbytes, t.dtype, t.shape).copy(), t.kind, t.dtype)
                       for t in tmetas]
            free_block(v.resp_arena, block_off, block_len)
            return decode_result(tensors, meta, self._device)
        # Lease the block: the arrays read it in place; it is freed when the last of them dies.
        base = v.layout.resp_arena + block_off
        lease: Any = (ctypes.c_char * block_len).from_buffer(link.segment.buf, base)
        weakref.finalize(lease, free_block, v.resp_arena, block_off)
        tensors = [from_wire(np.ndarray(t.shape, numpy_dtype(t.dtype), lease, t.offset - block_off), t.kind, t.dtype)
                   for t in tmetas]
        return decode_result(tensors, meta, self._device)

    def _deliver(self, done: list[tuple[Pending, Any, BaseException | None]],
                 here: asyncio.AbstractEventLoop | None = None) -> None:
        """Hand results to their callers; `here` is the loop this runs on, if any (no thread hop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for p, result, error in done:
            if p.stream is None:  # a stream's sink carries its end: on p, an error would be in a cycle
                p.result, p.error = result, error  # with the consumer's frames (see async_call)
            p.done = True
            if p.stream is not None:
                p.stream((None, error, True))  # after its items: the same sink, the same hop
                continue
            if p.future is not None and p.loop is not None:
                by_loop.setdefault(p.loop, []).append((p.future, result, error))
            elif p.lock is not None:
                _unlock(p.lock)
        for loop, items in by_loop.items():
            if loop is here:
                _settle_many(items)
                continue
            try:
                loop.call_soon_threadsafe(_settle_many, items)
            except RuntimeError:
                pass  # that loop is closed: nobody waits any more

    # -- lifetime -------------------------------------------------------------------------------
    def live_workers(self) -> int:
        """How many worker links are live (used by readiness checks)."""
        with self._lock:
            for link in self.links:
                if link.live and not link.worker_alive():
                    done = self._fail_link(link, "exited")
                    self._deliver(done)
            return sum(1 for link in self.links if link.live)

    def reconnect(self) -> int:
        """Attach to workers whose links are down (restarted since); returns how many are live."""
        with self._lock:
            for link in self.links:
                if not link.live and not link.pending:
                    link.try_connect(self.slots, self.arena_bytes, 1.0)
        return self.live_workers()

    def ready(self) -> bool:
        """True while the runner's supervisor holds its lease and at least one worker can take calls
        (re-attaching restarted ones first) and the watchdog sees it making progress."""
        if not lease.alive(str(self.record.get("lease", ""))):
            return False  # its workers are about to exit too: say so now
        if self.live_workers() == 0 and self.reconnect() == 0:
            return False
        now = time.monotonic()
        with self._lock:
            return any(link.live and link.healthy(now, self.watchdog) for link in self.links)

    def worker_pids(self) -> list[int]:
        return [link.worker_pid for link in self.links if link.live]

    def close(self) -> None:
        """Detach from the workers; calls still in flight fail with RunnerUnavailable."""
        if self._closed:
            return
        self._closed = True
        try:
            self.reply.post()  # wake the completion thread so it sees _closed
        except Exception:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        with self._lock:
            failed = []
            for link in self.links:
                if link.pending:
                    failed.extend(self._fail_link(link, "was detached by close()"))
                link.close()
                link.close_board()
        self._deliver(failed)
        self.reply.unlink()
        self.reply.close()
        if self.loop_wake is not None:
            loop, self._wake_loop = self._wake_loop, None
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


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _settle_many(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, error in items:
        _settle(fut, result, error)


def _close_signal(sig: Signal) -> None:
    sig.unlink()
    # At interpreter exit (threading's shutdown has marked the main thread stopped) daemon threads may
    # still wait on the semaphore in C: closing it under them crashed the process (SIGSEGV). The
    # process's exit closes it; the name is gone already.
    if threading.main_thread().is_alive():
        sig.close()


# -- public helpers ---------------------------------------------------------------------------
class RemoteMethod:
    """`client.<method>` of a connected runner: `.run()` and `.async_run()`, or `.stream()` and
    `.async_stream()` for a generator method."""

    def __init__(self, client: RunnerClient, name: str) -> None:
        self._client = client
        self.name = name
        self.streams = bool(client.methods.get(name, {}).get("stream"))

    def run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self._check(False)
        return self._client.call(self.name, args, kwargs, timeout)

    async def async_run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        self._check(False)
        return await self._client.async_call(self.name, args, kwargs, timeout)

    def stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        self._check(True)
        return self._client.stream(self.name, args, kwargs, timeout)

    def async_stream(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> AsyncGenerator[Any, None]:
        self._check(True)
        return self._client.async_stream(self.name, args, kwargs, timeout)

    def _check(self, stream: bool) -> None:
        if stream != self.streams:
            raise InvalidInput(f"{self._client.name}.{self.name} " + (
                "is not a generator method: use run() / async_run()" if stream else
                "is a generator method: iterate stream(...), or async_stream(...) with `async for`"))


class ConnectedRunner:
    """What `shmserve.connect(name)` returns: method handles of a runner another process serves."""

    def __init__(self, client: RunnerClient) -> None:
        self.client = client
        self.name = client.name
        self.methods = {m: RemoteMethod(client, m) for m in client.methods}
        for method, handle in self.methods.items():
            if not hasattr(self, method):  # a method named `close`, `name`, ...: reached as runner[name]
                setattr(self, method, handle)

    def __getitem__(self, method: str) -> RemoteMethod:
        """The handle of `method`, also when its name is taken by an attribute (``runner["close"]``)."""
        try:
            return self.methods[method]
        except KeyError:
            raise InvalidInput(f"runner {self.name!r} has no method {method!r}; it has {sorted(self.methods)}") from None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "ConnectedRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ConnectedRunner {self.name!r} methods={sorted(self.client.methods)}>"


def connect(name: str, timeout: float = 10.0) -> ConnectedRunner:
    """Attach to the running workers of runner `name` (started by any process of this user)."""
    return ConnectedRunner(RunnerClient(name, connect_timeout=timeout))


def attach(runner: Any, timeout: float = 10.0) -> RunnerClient:
    """Bind a `Runner` object to the running workers of the same name; returns the client."""
    client = RunnerClient(runner.name, connect_timeout=timeout)
    runner._bind(client)
    return client
