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

A call whose caller named an output destination (a client's shared-memory region, `shmserve.shm.extra`)
and whose result is one ndarray that fits it is answered without the arena: the result is written into
the worker's mapping of that object and the response names it (`ResultWriter.write`, `_in_region`).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from ..shm import wire
from ..shm.extra import OUT_MASK_OFF, ExtraMappings, output_dest
from ..shm.message import encode_result
from ..shm.wire import BLOCK_HEADER, U64, Status
from ..tensors import KIND_NUMPY, TRANSPORT, to_wire
from .channel import RESULT_SPACE_WAIT_S, Request, WorkerChannel
from .rows import Row

__all__ = ["ResultWriter", "RESULT_SPACE_WAIT_S", "RETRY_S", "wants_region"]

RETRY_S = 0.0005  # how often the loop looks for freed space while a result is parked


def rows_of(out: Any, total: int, dim: int) -> bool:
    """Whether `out` splits into a batch's results as consecutive rows that `ResultWriter.write_rows`
    copies as bytes: a C-contiguous, native-order numpy array of `total` items along dim 0."""
    return (type(out) is np.ndarray and dim == 0 and 1 <= out.ndim <= TRANSPORT.max_ndim and out.shape[0] == total
            and out.flags.c_contiguous and out.dtype.isnative and out.dtype.kind in TRANSPORT.dtype_kinds
            and out.dtype.fields is None)


def wants_region(ch: WorkerChannel) -> bool:
    """Whether some call of `ch` may have an output destination (one header word; zero for every client
    that names none)."""
    buf = getattr(getattr(ch, "view", None), "buf", None)  # None: a stand-in channel of unit tests
    return buf is not None and bool(U64.unpack_from(buf, OUT_MASK_OFF)[0])


def _in_region(ch: WorkerChannel, req: Request, tensors: list[Any], meta: bytes, times: tuple[float, ...],
               batch_size: int) -> bool:
    """Write `req`'s result straight into its output destination and publish its response; False (nothing
    written) when it has none, the result is not one ndarray that fits it, or no response slot is free."""
    if len(tensors) != 1 or tensors[0][1] != KIND_NUMPY or len(meta) > wire.META_INLINE_MAX:
        return False
    v = ch.view
    dest = output_dest(v.buf, req.seq)
    if dest is None or not ch.response_slot_free():
        return False
    arr, _kind, dtype_str = tensors[0]
    if ch.extra is None:
        ch.extra = ExtraMappings()
    try:
        dst = ch.extra.output_view(v.buf, dest, arr, dtype_str)
    except (ValueError, OSError):  # the region went away: the arena, and the caller's own checks
        return False
    if dst is None:
        return False
    np.copyto(dst, arr)
    del dst
    wire.pack_desc(v.buf, v.resp_slot(ch.resp_head), req.seq, int(Status.OK), 0, 0, 0, (*times, time.monotonic()),
                   batch_size, tensors, [dest[2]], meta, b"", [(dest[0], dest[1])])
    ch.resp_head += 1
    v.set(wire.H_RESP_HEAD, ch.resp_head)
    ch.dirty = True
    return True


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
            if code == Status.OK and wants_region(ch) and _in_region(ch, req, tensors, meta, times, batch_size):
                self.answered.add(id(req))
                return
            if ch.try_write_result(req, code, tensors, meta, times, batch_size) is not None:
                self.answered.add(id(req))
                return
            q = self.parked[ch] = deque()
        q.append(_Parked(req, code, tensors, meta, times, batch_size, time.monotonic()))
        self.answered.add(id(req))

    def write_array(self, batch: list[Request], out: Any, dim: int, times: tuple[float, float, float]) -> bool:
        """Write the OK results of a batch when its output `out` (split along `dim`) is one array of
        rows (see `rows_of`): most in one write per channel, the calls whose channel has no room now
        one by one (parked). False, and nothing written, for any other output."""
        total = sum(r.items for r in batch)
        if not rows_of(out, total, dim):
            return False
        arr, kind, dtype_str = to_wire(out, "result")
        for r, start in self.write_rows(batch, arr, kind, dtype_str, times, total):
            tensors, meta = encode_result(arr[start : start + r.items])
            self.write(r, Status.OK, tensors, meta, (r.dequeue, *times), total)
        return True

    def write_rows(self, batch: list[Request], out: np.ndarray, kind: int, dtype_str: str,
                   times: tuple[float, float, float], total: int) -> list[tuple[Request, int]]:
        """Write the OK results of a batch whose output `out` (C-contiguous, native byte order) holds
        each call's items as consecutive rows: every call of a channel with a block free now goes out
        in one `WorkerChannel.publish_rows` call. Returns (call, first row) of the calls left for
        `write` (a channel with parked results, or no room now): the later calls of their channel too,
        so one client's results keep their order."""
        row_bytes = out.nbytes // total  # not strides[0]: an empty array's says an item size
        # each channel of the batch: [its rows, (call, block) of each, response slots it may still fill
        # (0: blocked, by parked results, a call's output destination, or no room), its allocator]
        per: dict[WorkerChannel, list[Any]] = {}
        left: list[tuple[Request, int]] = []
        first_row = 0
        for r in batch:
            ch = r.channel
            start, first_row = first_row, first_row + r.items
            state = per.get(ch)
            if state is None:
                # Parked results, or calls with an output destination (written one by one, `_in_region`).
                if ch in self.parked or ch.closed or wants_region(ch):
                    state = per[ch] = [[], [], 0, None]
                else:
                    ch.reclaim_results()  # once, before any block of this batch is reserved (see reserve_result)
                    state = per[ch] = [[], [], ch.free_response_slots(), ch.results]
            entries = state[0]
            if len(entries) < state[2]:
                nbytes = r.items * row_bytes
                block = state[3].alloc(BLOCK_HEADER + nbytes, 64)  # `WorkerChannel.reserve_result`, inlined
                if block is not None:
                    entries.append((r.seq, block[0], block[1] - block[0], start * row_bytes, nbytes, r.items,
                                    r.dequeue))
                    state[1].append((r, block))
                    continue
            state[2] = 0  # this call and the channel's later ones go to `write`, in order
            left.append((r, start))
        for ch, state in per.items():
            if state[0]:
                self._publish(ch, out, state[0], state[1], kind, dtype_str, times, total)
        return left

    def _publish(self, ch: WorkerChannel, out: np.ndarray, entries: list[Row], blocks: list[tuple[Request, list[int]]],
                 kind: int, dtype_str: str, times: tuple[float, float, float], total: int) -> None:
        """`write_rows`' one `publish_rows` call for channel `ch`'s calls of the batch."""
        try:
            ch.publish_rows(out, entries, dtype_str.encode(), kind, tuple(out.shape[1:]), times, total)
        except Exception:  # nothing was written: free the blocks, and the batch fails these calls
            for _r, block in blocks:
                ch.results.release(block)
            raise
        self.answered.update(id(r) for r, _block in blocks)


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
