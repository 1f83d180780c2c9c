"""The client side of the transport: calls from any process into runner workers.

A `RunnerClient` serves every thread and event loop of one process for one
runner. It keeps what is the caller's: the pool of links to the workers
(`shmserve.pool`, one `shmserve.link.WorkerLink` each: the one-way transport
that owns a channel, its calls in flight and cursors), the limits (calls in
flight, arena size, the deadline admission), the codec (arguments to the
wire and results back, large results leased in place), the timeouts, and
the CUDA hand-off ledger. `shmserve.delivery` decides which waiting reader
takes each wake-up (a synchronous leader, an event loop, the completion
thread) and hands results to callers; one timer per event loop keeps the
async calls' deadlines (`shmserve.deadline.LoopDeadlines`). Completed calls'
timelines go to `shmserve.traces`.
"""
from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from typing import Any

import numpy as np

from . import lease, registry
from .client_stream import StreamingCalls
from .deadline import LoopDeadlines, call_deadline, request_deadline  # noqa: F401  (request_deadline: public)
from .delivery import Delivery, settle
from .doorbells import Doorbells
from .errors import InvalidInput, RunnerOverloaded, RunnerTimeout, RunnerUnavailable, TensorTooLarge
from .link import Done, Pending, free_block, link_for
from .pool import Link, LinkPool
from .shm.extra import EXTERNAL, results_in_place
from .shm.message import decode_result, encode_call, view
from .shm.signal import Signal
from .shm.wire import DEFAULT_SLOTS, MAX_TENSORS, META_ALIGN, META_INLINE_MAX, TensorMeta, layout, request_align
from .tensors import KIND_NUMPY, from_wire, numpy_dtype
from .traces import TraceHook, add_trace_hook, call_traces, remove_trace_hook  # noqa: F401  (public here too)
from .watchdog import WatchdogLimits

COPY_RESULT_MAX = 64 * 1024  # results up to this size are copied out; larger ones are leased in place
SPACE_WAIT_S = 30.0  # how long a call with no deadline waits for room in the arena


class RunnerClient(StreamingCalls):
    """Calls into the workers of one running runner (the shared-memory backend of a Runner).

    `record` is the runner's registry record (default: looked up by `name`); `transport` makes the
    link to one worker from its entry in the record (default `shmserve.link.link_for`; tests pass a
    fake link to drive the client without processes).
    """

    def __init__(self, name: str, connect_timeout: float = 10.0, *, record: dict[str, Any] | None = None,
                 transport: Callable[[str, dict[str, Any]], Link] | None = None) -> None:
        self.name = name
        self.record = record = registry.lookup(name) if record is None else record
        self.arena_bytes = int(record["arena_mb"]) * 2**20
        self.max_queue_size = int(record.get("max_queue_size", DEFAULT_SLOTS))
        #: seconds a call may take when its caller gives no timeout (the runner's ``timeout``; None: no bound)
        self.default_timeout: float | None = record.get("timeout")
        self.slots = DEFAULT_SLOTS
        self._lock = threading.Lock()  # submissions, the pool and its links
        self._delivery = delivery = Delivery(name, self._gather)
        self.reply = delivery.reply
        self._seq = 0
        self._inflight = 0
        self._closed = False
        self._timers: dict[asyncio.AbstractEventLoop, LoopDeadlines] = {}  # the call deadlines awaited per loop
        self._doorbells = Doorbells(self._lock)  # the posts an event loop's calls put off to the turn's end
        self._codec = codec = Codec()
        self._device, self._decode = codec.device, codec.decode  # bound once: both are on the hot path
        self.watchdog = WatchdogLimits.of(record.get("watchdog"))
        make = transport or link_for
        self._pool = LinkPool(name, [make(name, w) for w in record["workers"]], self.slots, self.arena_bytes,
                              self.watchdog, delivery.reply, delivery.link_wake)
        self.links = self._pool.links
        try:
            self._pool.connect_all(time.monotonic() + connect_timeout)
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _close_signal, delivery.reply)

    @property
    def methods(self) -> dict[str, Any]:
        """The runner's methods as its workers describe them (name -> index, stream, ...)."""
        return self._pool.methods

    # -- calls ------------------------------------------------------------------------------
    def _submit(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: float | None,
                block_for_space: bool = True, stream: Any = None, ring_on: asyncio.AbstractEventLoop | None = None) -> Pending:
        """Publish one call; `deadline` (monotonic seconds, None: none) travels with it to the worker.

        `stream`: a streaming call's item sink; `ring_on`: the call's loop (its post may wait: `Doorbells`)."""
        if self._closed:
            raise RunnerUnavailable(f"the client of runner {self.name!r} is closed")
        index = self._pool.codes.get(method)
        if index is None:
            raise InvalidInput(f"runner {self.name!r} has no method {method!r}; it has {sorted(self.methods)}")
        gpu = self._codec.gpu
        hint, releases = (None, None) if gpu is None else _gpu_hint(self._pool, self._lock, gpu)
        tensors, meta = encode_call(args, kwargs, self._device, releases)
        if len(tensors) > MAX_TENSORS:
            raise InvalidInput(f"a call carries at most {MAX_TENSORS} tensor arguments, got {len(tensors)}")
        # Inputs that lie in a client's registered object are read in place by the worker (shm.extra).
        external = EXTERNAL.locate_all(tensors) if EXTERNAL.active else None
        local = tensors if external is None else [t for t, e in zip(tensors, external) if e is None]
        if len(local) == 1:  # wire.block_layout inlined; one tensor: at 0
            arr = local[0][0]
            offsets, end, align = [0], arr.nbytes, arr.itemsize or 1
        else:
            offsets, end = layout(local, 0)
            align = request_align(local)
        meta_off = (end + META_ALIGN - 1) & ~(META_ALIGN - 1)
        nbytes = meta_off + len(meta) if len(meta) > META_INLINE_MAX else end
        if nbytes > self.arena_bytes:
            raise _too_large(nbytes, self.arena_bytes, self.name)
        if deadline is not None and deadline <= time.monotonic():
            raise RunnerTimeout(f"call to {self.name}.{method}: its deadline passed before it was sent")
        space_deadline = deadline  # with none, SPACE_WAIT_S from the first attempt that finds no room
        while True:
            with self._lock:
                if self._inflight >= self.max_queue_size:
                    raise RunnerOverloaded(
                        f"runner {self.name!r} has {self._inflight} calls in flight from this process "
                        f"(max_queue_size {self.max_queue_size}); retry later"
                    )
                link = hint if hint is not None and hint.live else self._pool.pick()
                later = ring_on is not None and self._inflight > 0  # a lone caller's call is posted at once
                p = link.submit(self._seq, index, method, tensors, offsets, meta, meta_off, nbytes, align, deadline,
                                stream, external, not later)
                if p is not None:
                    self._seq += 1
                    self._inflight += 1
                    if later:
                        self._doorbells.later(ring_on, link)  # type: ignore[arg-type]
                    return p
            # The arena or ring is full: results on their way back will free space.
            if space_deadline is None:
                space_deadline = time.monotonic() + SPACE_WAIT_S
            if not block_for_space or time.monotonic() > space_deadline:
                raise RunnerOverloaded(f"the shared-memory arena of runner {self.name!r} stayed full; retry later")
            self._delivery.wait_for_space()

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """Call `method` and wait for its result (the Backend interface)."""
        deadline = call_deadline(timeout, self.default_timeout)  # never past the request's
        p = self._submit(method, args, kwargs, deadline)
        if not self._delivery.wait(p, deadline):
            self.cancel(p)
            raise RunnerTimeout(f"call to {self.name}.{p.method} timed out")
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
        delivery = self._delivery
        if delivery.thread is None or delivery.wake_loop is not loop:
            self._serve_loop(loop)
        deadline = call_deadline(timeout, self.default_timeout)  # never past the request's
        p = self._submit(method, args, kwargs, deadline, False, None, loop)
        p.loop = loop
        p.future = fut
        if p.done:  # resolved before the future was attached
            settle(fut, p.result, p.error)
        if deadline is not None:
            # One timer per loop for every call's deadline, not a timer (or asyncio.wait_for's task) per call.
            timers = self._timers.get(loop)
            if timers is None:
                timers = LoopDeadlines.of(self._timers, loop, self._expire)
            timers.add(deadline, p.seq, p)
        try:
            return await fut
        except asyncio.CancelledError:
            self.cancel(p)  # the caller went away (an HTTP client that hung up): the call need not run
            raise
        finally:
            # Its deadline entry may outlive the call, and a raised error's traceback holds this frame:
            # keep no result or error alive (a cycle holding leased results fills the arena: TensorTooLarge).
            p.future = p.result = p.error = None
            del fut, p

    def _serve_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure results reach `loop`: the completion thread runs, and the first live loop reads for itself."""
        delivery = self._delivery
        delivery.ensure_thread()
        wake = delivery.wake_loop
        if wake is not loop and (wake is None or wake.is_closed()):
            made = delivery.listen_on(loop)
            if made is not None:
                with self._lock:
                    self._pool.announce(made)

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
            if not p.done:
                p.link.cancel(p)

    # -- results ------------------------------------------------------------------------------------
    def _gather(self, done: Done, check: bool) -> None:
        """Collect the completed calls of every link (the reader of `shmserve.delivery` calls this);
        with `check`, fail the calls of workers that died."""
        with self._lock:
            for link in self.links:
                if link.live:
                    self._inflight -= link.collect(self._decode, done)
            if check:
                for link in self.links:
                    if link.live and link.pending and not link.alive():
                        self._fail_link(link, "exited while serving this call", done)

    def _fail_link(self, link: Link, why: str, done: Done) -> None:
        """The worker behind `link` died (or the client closes): fail its calls into `done`, drop the link."""
        pid = link.worker_pid
        failed = link.close()
        self._inflight -= len(failed)
        err = RunnerUnavailable(f"runner {self.name!r} worker {link.index} (pid {pid}) {why}")
        self._codec.forget(pid)
        done.extend((p, None, err) for p in failed)

    # -- lifetime -------------------------------------------------------------------------------
    def live_workers(self) -> int:
        """How many worker links are live (used by readiness checks)."""
        done: Done = []
        with self._lock:
            for link in self.links:
                if link.live and not link.alive():
                    self._fail_link(link, "exited", done)
            live = sum(1 for link in self.links if link.live)
        self._delivery.deliver(done)
        return live

    def reconnect(self) -> int:
        """Attach to workers whose links are down (restarted since); returns how many are live."""
        with self._lock:
            self._pool.reconnect()
        return self.live_workers()

    def ready(self) -> bool:
        """True while the runner's supervisor holds its lease and at least one worker can take calls
        (re-attaching restarted ones first) and the watchdog sees it making progress."""
        if not lease.alive(str(self.record.get("lease", ""))):
            return False  # its workers are about to exit too: say so now
        if self.live_workers() == 0 and self.reconnect() == 0:
            return False
        with self._lock:
            return self._pool.any_healthy()

    def worker_pids(self) -> list[int]:
        """The pids of the workers this client is attached to."""
        return [link.worker_pid for link in self.links if link.live]

    def statistics(self) -> dict[str, Any]:
        """This client now: calls sent and in flight, the limit, each worker link, and the readers."""
        with self._lock:
            return {"runner": self.name, "calls_sent": self._seq, "in_flight": self._inflight,
                    "max_queue_size": self.max_queue_size, "closed": self._closed, "links": self._pool.statistics(),
                    "readers": self._delivery.statistics(), "deadlines_watched": sum(map(len, self._timers.values()))}

    def close(self) -> None:
        """Detach from the workers; calls still in flight fail with RunnerUnavailable."""
        if self._closed:
            return
        self._closed = True
        self._delivery.stop_thread()
        failed: Done = []
        with self._lock:
            for link in self.links:
                if link.pending:
                    self._fail_link(link, "was detached by close()", failed)
                link.close()
                link.close_board()
        self._delivery.deliver(failed)
        self._delivery.close()


class Codec:
    """The client's codec: results rebuilt from a link's result block (copied out when small, else
    their arrays lease the block in place) and the CUDA hand-off ledger both directions use."""

    __slots__ = ("gpu",)

    def __init__(self) -> None:
        self.gpu: Any = None  # shmserve.gpu.HandoffLedger, created when a CUDA tensor first crosses

    def device(self) -> Any:
        """The CUDA hand-off ledger (imports shmserve.gpu on first use)."""
        if self.gpu is None:
            from .gpu import HandoffLedger

            self.gpu = HandoffLedger()
        return self.gpu

    def forget(self, pid: int) -> None:
        """Worker `pid` is gone: drop the CUDA hand-offs it held."""
        if self.gpu is not None:
            from .gpu import sweep

            sweep()  # drop CUDA exports the dead worker held
            self.gpu.forget(pid)

    def decode(self, link: Link, tmetas: list[TensorMeta], meta: bytes, block_off: int, block_len: int) -> Any:
        """Rebuild the result in `link`'s result block at `block_off`."""
        if not meta and len(tmetas) == 1:
            t = tmetas[0]
            if not t.segment and t.kind == KIND_NUMPY:
                # The common result, one numpy array: copied out or leased here, without the general path's
                # view, from_wire, list and decode_result frames (once per call).
                if block_len > COPY_RESULT_MAX:
                    return np.ndarray(t.shape, numpy_dtype(t.dtype), link.lease(block_off, block_len),
                                      t.offset - block_off)
                arena = link.result_arena
                try:
                    return np.ndarray(t.shape, numpy_dtype(t.dtype), arena, t.offset).copy()
                finally:  # copied out, or not rebuildable: either way the block goes back to the worker
                    free_block(arena, block_off, block_len)
        if tmetas and tmetas[0].segment:  # written by the worker straight into a client region (shm.extra)
            return decode_result(results_in_place(link._extra, tmetas), meta, self.device)  # type: ignore[attr-defined]
        if not tmetas or block_len <= COPY_RESULT_MAX:
            arena = link.result_arena
            try:
                tensors = [from_wire(view(arena, t.offset, t.nbytes, t.dtype, t.shape).copy(), t.kind, t.dtype)
                           for t in tmetas]
            finally:  # copied out, or not rebuildable: either way the block goes back to the worker
                free_block(arena, block_off, block_len)
            return decode_result(tensors, meta, self.device)
        lease = link.lease(block_off, block_len)
        tensors = [from_wire(np.ndarray(t.shape, numpy_dtype(t.dtype), lease, t.offset - block_off), t.kind, t.dtype)
                   for t in tmetas]
        return decode_result(tensors, meta, self.device)


def _gpu_hint(pool: LinkPool, lock: threading.Lock, gpu: Any) -> tuple[Link, list[int] | None]:
    """The worker a call goes to, and the CUDA hand-offs it gave us that we no longer use: they ride
    back on the call."""
    with lock:
        hint = pool.pick()
    return hint, gpu.owed_to(hint.worker_pid) or None


def _too_large(nbytes: int, arena_bytes: int, runner: str) -> TensorTooLarge:
    return TensorTooLarge(f"input of {nbytes / 2**20:.1f} MB exceeds the {arena_bytes / 2**20:.0f} MB arena of runner "
                          f"{runner!r}; raise Runner(arena_mb=...) or runners.{runner}.arena_mb in the config")


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
        if self.streams:  # checked here, not by calling _check: no frame on the call path
            self._check(False)
        return self._client.call(self.name, args, kwargs, timeout)

    def async_run(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        if self.streams:
            self._check(False)
        return self._client.async_call(self.name, args, kwargs, timeout)  # the call's coroutine: no frame around it

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
