"""A mapped channel segment as both ends use it: two rings, each publish and consume.

The client publishes on the request ring and consumes the response ring; the
worker the other way round. Both go through the same `Ring.publish`,
`Ring.consume` and `Ring.copy_in`, so a record is written and read by one
piece of code, whose positions come from `shmserve.shm.wire`.
"""
from __future__ import annotations

from typing import Any, Generic, TypeVar

import numpy as np

from ..tensors import numpy_dtype
from . import wire
from .segment import Segment
from .wire import DESC_SIZE, F64, U64, ChannelLayout, RequestDesc, ResponseDesc, Tensor, TensorMeta

Desc = TypeVar("Desc", RequestDesc, ResponseDesc)


class Ring(Generic[Desc]):
    """One direction of a channel: descriptor slots, the head and tail words, the data arena."""

    __slots__ = ("buf", "first", "slots", "head_word", "tail_word", "arena", "record")

    def __init__(self, buf: memoryview, first: int, slots: int, head_word: int, tail_word: int,
                 arena: memoryview, record: type[Desc]) -> None:
        self.buf = buf
        self.first = first  # byte offset of slot 0
        self.slots = slots
        self.head_word = head_word
        self.tail_word = tail_word
        self.arena = arena
        self.record: type[Desc] = record

    def slot(self, n: int) -> int:
        """Byte offset of the descriptor of the `n`-th record published on this ring."""
        return self.first + (n % self.slots) * DESC_SIZE

    def copy_in(self, base: int, tensors: list[Tensor], offsets: list[int], meta: bytes, meta_off: int) -> None:
        """Copy a block's data into the arena: each tensor at `base + offset` (made contiguous little
        endian in that one copy), the metadata at `base + meta_off` when it does not fit inline."""
        arena = self.arena
        for (arr, _kind, dtype_str), off in zip(tensors, offsets):
            np.copyto(np.ndarray(arr.shape, numpy_dtype(dtype_str), arena, base + off), arr)
        n = len(meta)
        if n > wire.META_INLINE_MAX:
            arena[base + meta_off : base + meta_off + n] = meta

    def publish(self, n: int, seq: int, code: int, block_off: int, block_len: int, meta_off: int,
                times: tuple[float, float, float, float, float], batch_size: int,
                tensors: list[Tensor], offsets: list[int], meta: bytes, tag: bytes = b"",
                segments: list[tuple[int, int]] | None = None) -> int:
        """Write record `n` (its data already in the arena) and make it visible: the descriptor
        first, then the head word. Returns the descriptor's byte offset. The caller posts the peer.
        `tag`: a request's ``request_tag`` (empty: none); `segments`: each tensor's extra segment
        (`shmserve.shm.extra`; None: all in the arena)."""
        pos = self.slot(n)
        wire.pack_desc(self.buf, pos, seq, code, block_off, block_len, meta_off, times, batch_size,
                       tensors, offsets, meta, tag, segments)
        U64.pack_into(self.buf, self.head_word, n + 1)
        return pos

    def consume(self, tail: int) -> list[tuple[int, Desc, list[TensorMeta], bytes]]:
        """Every record published since `tail`, as (descriptor offset, fixed fields, tensor headers,
        metadata), and mark them consumed. The caller's cursor moves by the length of the list."""
        head = U64.unpack_from(self.buf, self.head_word)[0]
        if head == tail:
            return []
        out = []
        buf, arena, record = self.buf, self.arena, self.record
        while tail < head:
            pos = self.slot(tail)
            fixed, tensors, meta = wire.unpack_desc(buf, pos, arena, record)
            out.append((pos, fixed, tensors, meta))
            tail += 1
        U64.pack_into(buf, self.tail_word, tail)
        return out


class ChannelView:
    """A mapped channel segment: header words, the request and response rings and their arenas."""

    def __init__(self, segment: Segment, layout: ChannelLayout) -> None:
        self.segment = segment
        self.layout = layout
        self.buf = memoryview(segment.buf)
        self.slots = layout.slots
        self.req_arena = self.buf[layout.req_arena : layout.req_arena + layout.req_arena_size]
        self.resp_arena = self.buf[layout.resp_arena : layout.resp_arena + layout.resp_arena_size]
        self.requests: Ring[RequestDesc] = Ring(self.buf, layout.req_desc, layout.slots, wire.H_REQ_HEAD,
                                                wire.H_REQ_TAIL, self.req_arena, RequestDesc)
        self.responses: Ring[ResponseDesc] = Ring(self.buf, layout.resp_desc, layout.slots, wire.H_RESP_HEAD,
                                                  wire.H_RESP_TAIL, self.resp_arena, ResponseDesc)

    def get(self, off: int) -> int:
        """The u64 header word at `off` (a `wire.H_*` name)."""
        return int(U64.unpack_from(self.buf, off)[0])

    def set(self, off: int, value: int) -> None:
        """Write the u64 header word at `off`."""
        U64.pack_into(self.buf, off, value)

    def get_time(self, off: int) -> float:
        """The f64 header word at `off` (``H_DRAINED_AT``)."""
        return float(F64.unpack_from(self.buf, off)[0])

    def set_time(self, off: int, value: float) -> None:
        """Write the f64 header word at `off`."""
        F64.pack_into(self.buf, off, value)

    def req_slot(self, seq: int) -> int:
        """Byte offset of the `seq`-th request descriptor."""
        return self.requests.slot(seq)

    def resp_slot(self, seq: int) -> int:
        """Byte offset of the `seq`-th response descriptor."""
        return self.responses.slot(seq)

    def write_desc(self, pos: int, fixed: tuple[Any, ...], tensors: list[Tensor], offsets: list[int],
                   meta: bytes) -> None:
        """Write one descriptor at byte `pos` from (seq, code, block_off, block_len, meta_off, t0..t4,
        batch_size), without publishing it (`Ring.publish` writes and publishes)."""
        seq, code, block_off, block_len, meta_off, t0, t1, t2, t3, t4, batch_size = fixed
        wire.pack_desc(self.buf, pos, seq, code, block_off, block_len, meta_off, (t0, t1, t2, t3, t4),
                       batch_size, tensors, offsets, meta)

    def read_desc(self, pos: int, arena: memoryview) -> tuple[ResponseDesc, list[TensorMeta], bytes]:
        """Read the descriptor at byte `pos`: (fixed fields, tensor headers, metadata bytes)."""
        return wire.unpack_desc(self.buf, pos, arena, ResponseDesc)

    def request_tag(self, pos: int, seq: int) -> str:
        """The ``request_tag`` of request `seq` at byte `pos`: the HTTP request ID it serves ("" when none)."""
        return wire.read_request_tag(self.buf, pos, seq)

    def cancel(self, pos: int, seq: int) -> None:
        """Mark the request at byte `pos` (call `seq`) abandoned by its caller."""
        wire.mark_cancelled(self.buf, pos, seq)

    def cancelled(self, pos: int, seq: int) -> bool:
        """Whether the caller of request `seq` at byte `pos` gave up on it."""
        return wire.is_cancelled(self.buf, pos, seq)

    def release(self) -> None:
        """Drop the views into the segment (BufferError while leased results still use it)."""
        self.req_arena.release()
        self.resp_arena.release()
        self.buf.release()
