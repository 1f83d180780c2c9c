"""The calling side's transport to one runner worker: a one-way link.

A `WorkerLink` owns everything one (client process, worker) pair shares: the
channel segment it creates (request/response rings and arenas,
`shmserve.shm.channel`), the Unix socket of the attach handshake (also how
the worker's death is noticed), the worker's doorbell, the allocator of the
request arena, the table of calls in flight and both ring cursors. The
client drives it through a narrow API and the link never calls back:

* `connect`: create the channel and attach the worker to it (`CONNECT_ERRORS`
  when the worker is not there: it may be restarting);
* `submit`: copy one call into the request arena and publish it (None when
  the ring or arena has no room now); `ring` posts the worker's doorbell for
  calls published without a post (an event loop's calls: once per turn);
* `collect`: every response since the last collect, as ``(call, result,
  error)`` (streamed items go straight to their call's sink);
* `alive`: whether the worker's end of the socket is still open;
* `cancel`: mark one call's cancel word; `close`: detach, returning the calls
  that will never complete.

A link is not thread-safe: the client calls it under its own lock. `Pending`
is one call in flight on a link.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

import orjson

from . import traces
from .errors import InvalidInput, RunnerError, RunnerOverloaded, RunnerUnavailable, ShmserveError, from_wire
from .publish import Consumer, Publisher, consumer, native_pending, publisher
from .shm import extra, handshake
from .shm.channel import ChannelView
from .shm.health import HealthBoard
from .shm.ring import RingAllocator
from .shm.segment import Segment
from .shm.signal import Signal
from .shm.wire import (
    BLOCK_FIELDS,
    BLOCK_FREE,
    BLOCK_HEADER,
    F64,
    H_DRAINED_AT,
    U64,
    ChannelLayout,
    Status,
    Tensor,
    TensorMeta,
    block_layout,
    mark_cancelled,
    request_align,
)
from .traces import call_request_id, call_traces
from .watchdog import Health, WatchdogLimits

#: How the client rebuilds a result: ``decode(link, tensor headers, metadata, block offset, block length)``.
Decode = Callable[["WorkerLink", list[TensorMeta], bytes, int, int], Any]
Done = list[tuple["Pending", Any, "BaseException | None"]]  # completed calls: (call, result, error)


class Pending:
    """One call in flight: `new_pending` makes them (the C twin ``shmserve._native._client.Pending`` when
    built: the same attributes, set the same way, in one call)."""

    __slots__ = ("seq", "link", "slot", "block", "method", "submit", "done", "result", "error", "lock", "future",
                 "loop", "abandoned", "sink", "stream")

    def __init__(self, seq: int, link: Any, slot: int, block: Any, method: str, submit: float,
                 sink: list[tuple[str, str, dict[str, float]]] | None) -> None:
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
        # The caller's trace list (`shmserve.traces`) until the call's trace is in it; then None, since
        # a finished call stays a while in its loop's deadline heap (`LoopDeadlines`) and a kept list, its
        # trace and their tuple per call pushed the young objects alive past the collector's threshold.
        self.sink: list[tuple[str, str, dict[str, float]]] | None = sink


#: ``new_pending(seq, link, slot, block, method, submit, sink)``: the C `Pending` when built, else the class
new_pending: Callable[[int, Any, int, Any, str, float, Any], Pending] = native_pending() or Pending


HEALTH_EVERY_S = 0.05  # how long a reading of the worker's health board is reused
#: what `WorkerLink.connect` raises when the worker cannot be attached now (gone, restarting, refusing)
CONNECT_ERRORS = (OSError, ShmserveError, ValueError)
_ITEM, _OK = Status.ITEM, Status.OK
_STATE = BLOCK_FIELDS["state"][0]  # the result block header's state word


class WorkerLink:
    """This process's connection to one runner worker (see the module docstring for its API)."""

    def __init__(self, runner: str, index: int, socket_path: str, health_name: str | None = None) -> None:
        self.runner = runner  # the runner's name, for messages
        self.board: HealthBoard | None = None  # the worker slot's watchdog board (kept across restarts)
        if health_name:
            try:
                self.board = HealthBoard.attach(health_name)
            except Exception:  # gone already (the runner stopped), or foreign: judged healthy
                self.board = None
        self._health_at = -1.0
        self._healthy = True
        #: until when the last reading said healthy and is reused (`healthy`): the pool reads it, no call
        self.healthy_until = -1.0 if self.board is not None else float("inf")
        self.index = index
        self.socket_path = socket_path
        self.sock: socket.socket | None = None
        self.segment: Segment | None = None
        self.view: ChannelView | None = None
        self.doorbell: Signal | None = None
        self.worker_pid = 0
        self.live = False
        self.slots = 0
        self._req_head = 0  # requests published (the ring's head cursor)
        self._resp_tail = 0  # responses consumed (the ring's tail cursor)
        self.requests: RingAllocator | None = None
        self.pending: dict[int, Pending] = {}  # the calls in flight, by seq
        self.last_attempt = 0.0
        self.methods: dict[str, Any] = {}

    # -- connecting ------------------------------------------------------------------------------
    def connect(self, slots: int, arena_bytes: int, reply: Signal, loop_wake: int | None,
                timeout: float = 10.0) -> None:
        """Create this link's channel and attach the worker to it; the worker posts `reply` (and
        signals the eventfd `loop_wake`, if given) when responses are ready."""
        chan = ChannelLayout(slots, arena_bytes, arena_bytes)
        sock, segment, doorbell, answer = _attach(self.socket_path, chan, reply, timeout,
                                                  f"runner {self.runner!r} worker {self.index}")
        self.adopt(sock, segment, chan, doorbell, answer, loop_wake)

    def adopt(self, sock: Any, segment: Any, chan: ChannelLayout, doorbell: Any, answer: dict[str, Any],
              loop_wake: int | None) -> None:
        """Serve calls over an attached channel (`connect` after the handshake; tests pass one in memory)."""
        self.sock = sock
        self.segment = segment
        self.view = view = ChannelView(segment, chan)
        self._requests, self._buf = view.requests, view.buf
        self._extra: extra.LinkSlots | None = None  # this channel's extra-segment entries, once a call uses one
        self.result_arena = view.resp_arena  # where the codec reads results (`lease`, `free_block`)
        self.doorbell = doorbell
        self._publish: Publisher | None = publisher(view.requests, doorbell)  # the common call's publish and post
        self._consume: Consumer = consumer(view.responses)
        self.worker_pid = int(answer["pid"])
        self.methods = answer["methods"]
        self.requests = RingAllocator(chan.req_arena_size)
        self.slots = chan.slots
        self._req_head = 0
        self._resp_tail = 0
        self.live = True
        if loop_wake is not None:
            self.send_loop_wake(loop_wake)

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

    # -- calls ------------------------------------------------------------------------------------
    def submit(self, seq: int, index: int, method: str, tensors: list[Tensor], offsets: list[int], meta: bytes,
               meta_off: int, nbytes: int, align: int, deadline: float | None, stream: Any = None,
               external: list[Any] | None = None, post: bool = True) -> Pending | None:
        """Publish call `seq` (method `index`) and ring the worker's doorbell (unless not `post`: the
        caller then calls `ring` soon); None when the ring or the request arena has no room now.
        `offsets`/`meta_off` are relative to the call's block of `nbytes`.

        Raises RunnerOverloaded when the worker's queue would be served after `deadline` (the worker
        would refuse the call: say so without the round trip)."""
        if deadline is not None and F64.unpack_from(self._buf, H_DRAINED_AT)[0] > deadline:
            _refuse_late(self.runner, F64.unpack_from(self._buf, H_DRAINED_AT)[0], deadline)
        if len(self.pending) >= self.slots:
            return None
        segments = local = None
        if external is not None:
            segments, local, offsets, meta_off, nbytes, align = _place_external(self, external, tensors, offsets, meta,
                                                                                    meta_off, nbytes, align)
        block = self.requests.alloc(nbytes, align)  # type: ignore[union-attr]
        if block is None:
            return None
        base = block[0]
        tag = call_request_id.get() if traces.tagging else b""
        try:
            if extra.OUTPUT_TO.get() is not None:  # the caller wants the result in a client region (shm.extra)
                self._extra = extra.place_output(self._extra, self._buf, seq)
            if segments is None:  # every tensor copied into the arena (the common call), posted if `post`
                submit, pos = self._publish(self._req_head, seq, index, base, block[1] - base,  # type: ignore[misc]
                                            tensors, offsets, meta, meta_off, deadline, tag, post)
            else:  # some tensors read in place from extra segments (`shmserve.shm.extra`): the Python path
                ring = self._requests
                ring.copy_in(base, tensors if local is None else local, offsets, meta, meta_off)
                submit = time.monotonic()
                placed = extra.offsets_in_place(external, segments, [base + o for o in offsets])  # type: ignore[arg-type]
                pos = ring.publish(self._req_head, seq, index, base, block[1] - base, base + meta_off,
                                   (submit, deadline or 0.0, 0.0, 0.0, 0.0), 0, tensors, placed, meta, tag, segments)
        except BaseException:
            self.requests.release(block)  # type: ignore[union-attr]
            extra.release_output(self._extra, seq)
            raise
        self._req_head += 1
        p = new_pending(seq, self, pos, block, method, submit, call_traces.get())
        p.stream = stream  # set before the worker can answer
        self.pending[seq] = p
        if post and segments is not None:
            self.doorbell.post()  # type: ignore[union-attr]
        return p

    def ring(self) -> None:
        """Post the worker's doorbell for the calls `submit` published without a post."""
        if self.doorbell is not None:
            self.doorbell.post()

    def cancel(self, p: Pending) -> None:
        """Mark call `p`'s cancel word: the worker then never runs it (or stops its stream)."""
        buf = self._buf if self.live else None
        if buf is not None and p.seq in self.pending:
            try:
                mark_cancelled(buf, p.slot, p.seq)
            except (ValueError, TypeError):
                pass  # the link closed meanwhile: the call is gone with it

    def collect(self, decode: Decode, done: Done) -> int:
        """Append every call completed since the last collect to `done` as (call, result, error), and
        hand streamed items to their calls' sinks; results are rebuilt by `decode`. Returns how many
        calls completed."""
        records = self._consume(self._resp_tail)  # marks them consumed
        if not records:
            return 0
        self._resp_tail += len(records)
        n = 0
        complete = time.monotonic()
        pending = self.pending
        arena = self.result_arena
        for _pos, d, tmetas, meta in records:
            status = d.status
            if status == _ITEM:  # one item of a streaming call: the call stays in flight
                _stream_item(self, decode, pending.get(d.seq), tmetas, meta, d.block_off, d.block_len)
                continue
            p = pending.pop(d.seq, None)
            if self._extra is not None and self._extra.outs:  # its output destination entry, if any
                self._extra.release_output(d.seq)
            if p is None:  # nobody waits for it (a second answer to a call): its block goes back all the same
                free_block(arena, d.block_off, d.block_len)
                continue
            self.requests.release(p.block)  # type: ignore[union-attr]
            result: Any = None
            error: BaseException | None = None
            if status == _OK:
                if p.abandoned:
                    free_block(arena, d.block_off, d.block_len)
                else:
                    try:
                        result = decode(self, tmetas, meta, d.block_off, d.block_len)
                    except Exception as exc:  # a result this process cannot rebuild
                        error = InvalidInput(f"result of {self.runner}.{p.method} could not be decoded: {exc}")
            else:
                error = remote_error(self.runner, p.method, status, meta)
                if d.block_len:
                    free_block(arena, d.block_off, d.block_len)
            if traces.wanted(p.sink):
                traces.deliver(self.runner, p.method, {
                    "submit": p.submit, "dequeue": d.dequeue, "batch_start": d.batch_start,
                    "model_start": d.model_start, "model_end": d.model_end, "written": d.written,
                    "complete": complete, "batch_size": d.batch_size}, p.sink)
                p.sink = None  # handed over: a finished call in a deadline heap must not keep it (GC)
            done.append((p, result, error))
            n += 1
        return n

    def lease(self, block_off: int, block_len: int) -> Any:
        """A buffer over result block `block_off` that hands the block back to the worker when it dies
        (the arrays of a large result read it in place)."""
        assert self.view is not None and self.segment is not None
        buf: Any = (ctypes.c_char * block_len).from_buffer(self.segment.buf, self.view.layout.resp_arena + block_off)
        weakref.finalize(buf, free_block, self.result_arena, block_off)
        return buf

    # -- health and lifetime ----------------------------------------------------------------------
    def healthy(self, now: float, limits: WatchdogLimits) -> bool:
        """Whether the watchdog's board shows the worker making progress (True when there is no board)."""
        if self.board is None:
            return True
        if now - self._health_at > HEALTH_EVERY_S:
            self._health_at = now
            self._healthy = self.board.judge(now, limits) is Health.OK
            self.healthy_until = now + HEALTH_EVERY_S if self._healthy else -1.0
        return self._healthy

    def alive(self) -> bool:
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

    def close(self) -> list[Pending]:
        """Detach from the worker; returns the calls that were in flight (they never complete)."""
        self.live = False
        failed = list(self.pending.values())
        self.pending.clear()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._publish = None  # with it the C handle on the doorbell
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
        return failed

    def close_board(self) -> None:
        """Let go of the watchdog board (when the client closes for good)."""
        if self.board is not None:
            self.board.close()
            self.board = None
            self.healthy_until = float("inf")  # judged healthy from now on, as `healthy` says


def _place_external(link: WorkerLink, external: list[Any], tensors: list[Tensor], offsets: list[int], meta: bytes,
                    meta_off: int, nbytes: int, align: int) -> tuple[Any, ...]:
    """Announce to `link`'s worker the objects a call's inputs lie in (`shmserve.shm.extra`); when the
    channel's entries are all taken, lay the call out to be copied whole, as without them."""
    if link._extra is None:
        link._extra = extra.LinkSlots(link._buf)
    segments = link._extra.announce_all(external)
    if segments is not None:
        return segments, [t for t, e in zip(tensors, external) if e is None], offsets, meta_off, nbytes, align
    offsets, meta_off, nbytes = block_layout(tensors, len(meta))
    return None, None, offsets, meta_off, nbytes, request_align(tensors)


def _refuse_late(runner: str, drained_at: float, deadline: float) -> None:
    """The worker's queue would be served after the call's `deadline`: RunnerOverloaded, no round trip."""
    now = time.monotonic()
    raise RunnerOverloaded(f"runner {runner!r} is busy: its queue would be served in {drained_at - now:.3f} s, "
                           f"after this call's deadline ({deadline - now:.3f} s away); retry later")


def _attach(path: str, chan: ChannelLayout, reply: Signal, timeout: float,
            who: str) -> tuple[socket.socket, Segment, Signal, dict[str, Any]]:
    """The attach handshake: a new channel segment of layout `chan`, offered to the worker listening
    at `path`; returns (socket, segment, the worker's doorbell, its answer)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    segment = None
    try:
        sock.connect(path)
        segment = Segment.create(chan.total)
        chan.write_header(memoryview(segment.buf))
        handshake.send(sock, {"segment": segment.name, "signal": reply.name, "pid": os.getpid()})
        answer = handshake.receive(sock)
        if not answer.get("ok"):
            raise RunnerUnavailable(f"{who} refused the channel: {answer.get('error')}")
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
    return sock, segment, doorbell, answer


def _stream_item(link: WorkerLink, decode: Decode, p: Pending | None, tmetas: list[TensorMeta], meta: bytes,
                 block_off: int, block_len: int) -> None:
    """Hand one streamed item to its call's sink, in order with the call's end (its last response)."""
    if p is None or p.abandoned or p.stream is None:
        free_block(link.result_arena, block_off, block_len)
        return
    entry: tuple[Any, BaseException | None, bool]
    try:
        entry = (decode(link, tmetas, meta, block_off, block_len), None, False)
    except Exception as exc:
        entry = (None, InvalidInput(f"an item of {link.runner}.{p.method} could not be decoded: {exc}"), False)
    p.stream(entry)


def link_for(runner: str, worker: dict[str, Any]) -> WorkerLink:
    """The link to one worker of a runner's registry record (``{"index", "socket", "health"}``)."""
    return WorkerLink(runner, worker["index"], worker["socket"], worker.get("health"))


def free_block(arena: memoryview, block_off: int, block_len: int = BLOCK_HEADER) -> None:
    """Hand a result block back to the worker (it reclaims it when it next allocates)."""
    if not block_len:
        return  # the response had no block
    try:
        U64.pack_into(arena, block_off + _STATE, BLOCK_FREE)  # wire.release_block, inlined: once per call
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
