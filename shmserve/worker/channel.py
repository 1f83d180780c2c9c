"""The worker's side of one client channel: read calls, write results, wake the client.

A channel is one shared-memory segment a client created for this worker
(layout in `shmserve.shm.ring`). The worker reads request descriptors from
it, allocates result blocks in its response arena (`RingAllocator`, with the
client marking blocks free as it drops leased results) and posts the client's
reply semaphore, plus its event-loop eventfd when it sent one.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from ..shm import ring
from ..shm.channel import ChannelView
from ..shm.extra import ExtraMappings
from ..shm.message import layout, view
from ..shm.ring import BLOCK_BUSY, BLOCK_FREE, BLOCK_HEADER, U64, ChannelLayout, RingAllocator
from ..shm.segment import Segment
from ..shm.signal import Signal
from ..shm.wire import CANCEL_OFF, TensorMeta
from . import rows

RESULT_SPACE_WAIT_S = 2.0  # how long a result may wait for the caller to free result-arena space


class Request:
    """One call read from a channel: where it is, what it carries, its deadline (0: none). `read_new`
    makes them with `new_request` (the C twin ``shmserve._native._worker.Request`` when built: the
    same attributes, set the same way, in one call)."""

    __slots__ = ("seq", "channel", "slot", "method", "meta", "tensors", "submit", "deadline", "items", "dequeue",
                 "cancelled")

    def __init__(self, seq: int, channel: "WorkerChannel", slot: int, method: int, meta: bytes,
                 tensors: list[TensorMeta], submit: float, deadline: float, dequeue: float,
                 cancelled: bool = False) -> None:
        self.seq = seq
        self.slot = slot  # byte offset of its descriptor, which holds the caller's cancel word
        self.channel = channel
        self.method = method
        self.meta = meta
        self.tensors = tensors
        self.submit = submit
        self.deadline = deadline
        self.dequeue = dequeue
        self.items = 1
        self.cancelled = cancelled  # its cancel word said so when it was read (`WorkerChannel.abandoned` reads it now)


#: ``new_request(seq, channel, slot, method, meta, tensors, submit, deadline, dequeue[, cancelled])``:
#: the C `Request` when built, else the class
new_request: Callable[..., Request] = rows.NATIVE.Request if rows.NATIVE is not None else Request


class WorkerChannel:
    """The worker's side of one client channel."""

    def __init__(self, segment: Segment, sock: socket.socket, reply: Signal, client_pid: int = 0) -> None:
        self.view = ChannelView(segment, ChannelLayout.read_header(memoryview(segment.buf)))
        self.client_pid = client_pid
        self.pinned: Any = None  # page-locked request arena of a GPU worker
        self.segment = segment
        self.sock = sock
        self.reply = reply
        self.req_tail = self.view.get(ring.H_REQ_TAIL)
        self.resp_head = self.view.get(ring.H_RESP_HEAD)
        self.results = RingAllocator(self.view.layout.resp_arena_size)
        self.closed = False  # set by the control thread when the client went away
        self.dirty = False  # results written since the last post
        self.drained_sent: float | None = None  # the H_DRAINED_AT this worker last wrote (None: not yet)
        self.loop_wake: int | None = None  # eventfd of the client's asyncio loop, when it sent one
        self.extra: ExtraMappings | None = None  # client objects its calls' inputs live in, once one does

    def read_new(self, now: float) -> list[Request]:
        """Every call published since the last read (one `rows.consume` call), marked consumed."""
        lay = self.view.layout
        self.req_tail, got = rows.consume(self.view.buf, lay.req_desc, lay.slots, self.req_tail, ring.H_REQ_HEAD,
                                          ring.H_REQ_TAIL, lay.req_arena, lay.req_arena_size)
        return [new_request(seq, self, pos, method, meta, tensors, submit, deadline, now, gone)
                for pos, seq, method, meta, tensors, submit, deadline, gone in got]

    def abandoned(self, req: Request) -> bool:
        """Whether the caller gave up on `req` (timed out, or its HTTP client went away)."""
        # `ChannelView.cancelled`, written out: the dispatch loop reads it for every call it runs
        return self.closed or U64.unpack_from(self.view.buf, req.slot + CANCEL_OFF)[0] == req.seq + 1

    def input_view(self, t: TensorMeta) -> np.ndarray:
        if t.segment:  # in a client's registered object, not in the arena (shmserve.shm.extra)
            if self.extra is None:
                self.extra = ExtraMappings()
            return self.extra.view(self.view.buf, t)
        return view(self.view.req_arena, t.offset, t.nbytes, t.dtype, t.shape)

    def alloc_result(self, nbytes: int, wait_s: float = 0.0) -> list[int] | None:
        """A result block for `nbytes` bytes, waiting up to `wait_s` seconds for the caller to free
        room; None when there is none."""
        total = BLOCK_HEADER + nbytes
        if total > self.results.size:
            return None
        deadline = 0.0
        while True:
            self.results.reclaim_freed(self.view.resp_arena, BLOCK_FREE)
            block = self.results.alloc(total, 64)
            if block is not None:
                arena = self.view.resp_arena
                U64.pack_into(arena, block[0], BLOCK_BUSY)
                U64.pack_into(arena, block[0] + 8, total)
                return block
            now = time.monotonic()
            deadline = deadline or now + wait_s
            if self.closed or now >= deadline:
                return None
            time.sleep(0.0005)  # the caller frees space as it drops leased results

    def reclaim_results(self) -> None:
        """Reclaim the result blocks the client let go of (`reserve_result` does not)."""
        self.results.reclaim_freed(self.view.resp_arena, BLOCK_FREE)

    def reserve_result(self, nbytes: int) -> list[int] | None:
        """A result block for `nbytes` bytes of data, if there is room now, without reclaiming: its
        header is left to `publish_rows`, and until then its state word is stale, so a reclaim in
        between could take it for one the client freed (reclaim once, before reserving a batch's)."""
        return self.results.alloc(BLOCK_HEADER + nbytes, 64)

    def free_response_slots(self) -> int:
        """Response slots the client's reader has taken (or never used)."""
        return self.view.layout.slots - (self.resp_head - self.view.get(ring.H_RESP_TAIL))

    def publish_rows(self, src: np.ndarray, entries: list[rows.Row], dtype: bytes, kind: int,
                     trailing: tuple[int, ...], times: tuple[float, float, float], batch_size: int) -> None:
        """Write OK results that are rows of `src` into their reserved blocks and publish them at once
        (`rows.publish_rows`); the post comes with the next flush."""
        lay = self.view.layout
        self.resp_head = rows.publish_rows(self.view.buf, lay.resp_desc, lay.slots, self.resp_head, ring.H_RESP_HEAD,
                                           lay.resp_arena, src, 0, entries, dtype, kind, trailing,
                                           (*times, time.monotonic()), batch_size)
        self.dirty = True

    def wait_response_slot(self, req: Request, final: bool = False, beat: Callable[[], None] | None = None) -> bool:
        """Wait until the response ring has a free slot for one more response of a streaming call.

        A call's one response may find the ring full only after a stream (the client keeps at most
        `slots` calls in flight): `try_write_result` then writes nothing. False when the client went away, or (unless `final`)
        gave up on the call (its cancel word). `beat` is called while waiting: a slow
        consumer is not a hung worker.
        """
        v = self.view

        def stop() -> bool:
            return self.closed or (not final and self.abandoned(req))

        while self.resp_head - v.get(ring.H_RESP_TAIL) >= v.layout.slots:
            if stop():
                return False
            self.flush()
            if beat is not None:
                beat()
            time.sleep(0.0005)  # the client's reader frees slots as it takes responses
        return not stop()

    def response_slot_free(self) -> bool:
        """Whether the response ring has a slot the client's reader has taken (or never used)."""
        return self.resp_head - self.view.get(ring.H_RESP_TAIL) < self.view.layout.slots

    def write_result(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                     batch_size: int, wait_s: float = RESULT_SPACE_WAIT_S) -> int:
        """Write one response (descriptor + data block) and publish it; the post comes later.

        Returns the status written: `code`, or ST_TOO_LARGE when the result is larger than the arena
        or found no room within `wait_s` seconds (results the caller still holds)."""
        written = self._write(req, code, tensors, meta, times, batch_size, wait_s)
        assert written is not None  # only a write that may not wait can write nothing
        return written

    def try_write_result(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                         batch_size: int) -> int | None:
        """`write_result` without waiting: None (and nothing written) when the result would fit but
        finds no room now; the dispatch loop then parks it (`shmserve.worker.results`)."""
        return self._write(req, code, tensors, meta, times, batch_size, None)

    def _write(self, req: Request, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
               batch_size: int, wait_s: float | None) -> int | None:
        v = self.view
        if not self.response_slot_free():
            # Every slot holds a response the reader has not taken (a stream's items can fill the
            # ring): writing now would overwrite one. Parked (None), or for a direct writer a wait.
            if wait_s is None:
                return None
            while not self.response_slot_free() and not self.closed:
                time.sleep(0.0005)
        offsets, end = layout(tensors, 0, 64)
        meta_off = end
        nbytes = end + (len(meta) if len(meta) > ring.META_INLINE_MAX else 0)
        block = self.alloc_result(nbytes, wait_s or 0.0)
        if block is None and wait_s is None and BLOCK_HEADER + nbytes <= self.results.size and not self.closed:
            return None
        if block is None and not tensors and code not in (ring.ST_OK, ring.ST_ITEM):
            # An error whose message and traceback find no room: its type and message travel inline.
            meta, meta_off, base = _inline_error(meta, keep_type=code == ring.ST_MODEL_ERROR), 0, 0
        elif block is None:
            limit = self.results.size - BLOCK_HEADER
            what = "exceeds" if BLOCK_HEADER + nbytes > self.results.size else "does not fit (results held by the caller fill)"
            code = ring.ST_TOO_LARGE
            tensors, offsets = [], []
            meta = orjson.dumps({"type": "TensorTooLarge", "message":
                                 f"result of {nbytes / 2**20:.1f} MB {what} the {limit / 2**20:.0f} MB result arena; "
                                 "raise Runner(arena_mb=...) (runners.<name>.arena_mb in the config) or drop leased results sooner", "traceback": ""})
            meta_off = 0
            block = self.alloc_result(len(meta), wait_s or 0.0) if len(meta) > ring.META_INLINE_MAX else None
            if block is None:  # no room for the message either: a shorter one, inline
                meta = _inline_error(orjson.dumps({"message": f"result of {nbytes / 2**20:.1f} MB finds no room in the "
                                                   f"{limit / 2**20:.0f} MB result arena; raise arena_mb or drop "
                                                   "leased results sooner"}), keep_type=False)
            base = block[0] + BLOCK_HEADER if block else 0
        else:
            base = block[0] + BLOCK_HEADER
            arena = v.resp_arena
            for (arr, _kind, dtype_str), off in zip(tensors, offsets):
                dst = view(arena, base + off, arr.nbytes, dtype_str, arr.shape)
                np.copyto(dst, arr)
        if len(meta) > ring.META_INLINE_MAX and block is not None:
            v.resp_arena[base + meta_off : base + meta_off + len(meta)] = meta
        abs_offsets = [base + o for o in offsets]
        block_off = block[0] if block else 0
        fixed = (req.seq, code, block_off, block[1] - block[0] if block else 0, base + meta_off,
                 *times, time.monotonic(), batch_size)
        v.write_desc(v.resp_slot(self.resp_head), fixed, tensors, abs_offsets, meta)
        self.resp_head += 1
        v.set(ring.H_RESP_HEAD, self.resp_head)
        self.dirty = True
        return code

    def flush(self) -> None:
        """Tell the client that results were written since the last flush: one wake-up per flush
        (its reply semaphore, and its event loop's eventfd when it sent one)."""
        if self.dirty:
            self.dirty = False
            try:
                self.reply.post()
                efd = self.loop_wake
                if efd is not None:
                    os.eventfd_write(efd, 1)
            except Exception:
                self.closed = True

    def set_loop_wake(self, fd: int) -> None:
        """The client's event loop listens on this eventfd: signal it with every post."""
        old, self.loop_wake = self.loop_wake, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        self.closed = True
        if self.extra is not None:
            self.extra.close()
        if self.loop_wake is not None:
            os.close(self.loop_wake)
            self.loop_wake = None
        if self.pinned is not None:
            try:
                self.pinned.unregister()
            except Exception:
                pass
            self.pinned = None
        try:
            self.sock.close()
        except OSError:
            pass
        self.reply.close()
        try:
            self.view.release()
        except BufferError:
            pass
        self.segment.close()


def _inline_error(meta: bytes, keep_type: bool) -> bytes:
    """Error metadata cut to fit a descriptor inline: the message (shortened if need be), and the
    type where the caller reads it (a model error; other statuses name their exception themselves).

    Without a block the metadata cannot go to the arena: a descriptor that said it did would point
    the caller at bytes written for another call (another caller's data in an error message)."""
    try:
        info = orjson.loads(meta)
        etype, message = str(info.get("type", "Error")), str(info.get("message", ""))
    except (ValueError, AttributeError):
        etype, message = "Error", meta.decode(errors="replace")
    fields = {"type": etype[:48]} if keep_type else {}
    out = orjson.dumps({**fields, "message": message})
    raw = message.encode()
    while len(out) > ring.META_INLINE_MAX:
        raw = raw[: max(0, len(raw) - (len(out) - ring.META_INLINE_MAX) - 3)]
        out = orjson.dumps({**fields, "message": raw.decode(errors="ignore") + "..."})
    return out


def pin_request_arena(channel: WorkerChannel) -> Any:
    """Page-lock a GPU worker's request arena so batch views reach the device by DMA."""
    try:
        from ..gpu import register_host

        return register_host(channel.view.req_arena, keep_export=False)
    except Exception as exc:  # no usable CUDA here: serve from pageable memory
        print(f"shmserve: could not pin the request arena ({exc}); host-to-device copies will stage",
              file=sys.stderr)
        return None
