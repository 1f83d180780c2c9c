"""Reading and writing descriptors of a channel segment (both sides use this)."""
from __future__ import annotations

from typing import Any

from .message import Tensor
from .ring import (
    CANCEL_OFF,
    DESC_SIZE,
    F64,
    FIXED,
    FLAG_META_IN_ARENA,
    META_INLINE_MAX,
    META_INLINE_OFF,
    TENSOR_SLOT,
    TENSORS_OFF,
    U64,
    ChannelLayout,
)
from .segment import Segment
from .tensor import TensorMeta, pack_header, unpack_header


class ChannelView:
    """A mapped channel segment: header words, descriptor slots and arenas."""

    def __init__(self, segment: Segment, layout: ChannelLayout) -> None:
        self.segment = segment
        self.layout = layout
        self.buf = memoryview(segment.buf)
        self.slots = layout.slots
        self.req_arena = self.buf[layout.req_arena : layout.req_arena + layout.req_arena_size]
        self.resp_arena = self.buf[layout.resp_arena : layout.resp_arena + layout.resp_arena_size]

    def get(self, off: int) -> int:
        return U64.unpack_from(self.buf, off)[0]

    def set(self, off: int, value: int) -> None:
        U64.pack_into(self.buf, off, value)

    def get_time(self, off: int) -> float:
        return float(F64.unpack_from(self.buf, off)[0])

    def set_time(self, off: int, value: float) -> None:
        F64.pack_into(self.buf, off, value)

    def req_slot(self, seq: int) -> int:
        return self.layout.req_desc + (seq % self.slots) * DESC_SIZE

    def resp_slot(self, seq: int) -> int:
        return self.layout.resp_desc + (seq % self.slots) * DESC_SIZE

    def write_desc(
        self,
        pos: int,
        fixed: tuple[Any, ...],
        tensors: list[Tensor],
        offsets: list[int],
        meta: bytes,
    ) -> None:
        """Write one descriptor at byte `pos`: the fixed part, then tensor headers and inline metadata.

        `fixed` holds every FIXED field except flags/meta_len/ntensors, which
        are derived here: (seq, code, block_off, block_len, meta_off, t0..t4, batch_size).
        """
        seq, code, block_off, block_len, meta_off, t0, t1, t2, t3, t4, batch_size = fixed
        flags = 0
        if len(meta) > META_INLINE_MAX:
            flags |= FLAG_META_IN_ARENA
        else:
            self.buf[pos + META_INLINE_OFF : pos + META_INLINE_OFF + len(meta)] = meta
        FIXED.pack_into(
            self.buf, pos, seq, code, flags, block_off, block_len, len(meta), len(tensors), meta_off,
            t0, t1, t2, t3, t4, batch_size, 0, 0,
        )
        tpos = pos + TENSORS_OFF
        for (arr, kind, dtype_str), off in zip(tensors, offsets):
            pack_header(self.buf, tpos, off, arr, kind, dtype_str)
            tpos += TENSOR_SLOT

    def cancel(self, pos: int, seq: int) -> None:
        """Mark the request at byte `pos` (call `seq`) abandoned by its caller."""
        U64.pack_into(self.buf, pos + CANCEL_OFF, seq + 1)

    def cancelled(self, pos: int, seq: int) -> bool:
        """Whether the caller of request `seq` at byte `pos` gave up on it."""
        return bool(U64.unpack_from(self.buf, pos + CANCEL_OFF)[0] == seq + 1)

    def read_desc(self, pos: int, arena: memoryview) -> tuple[tuple[Any, ...], list[TensorMeta], bytes]:
        """Read one descriptor: (fixed fields, tensor headers, metadata bytes)."""
        fixed = FIXED.unpack_from(self.buf, pos)
        flags, meta_len, ntensors, meta_off = fixed[2], fixed[5], fixed[6], fixed[7]
        if not meta_len:
            meta = b""
        elif flags & FLAG_META_IN_ARENA:
            meta = bytes(arena[meta_off : meta_off + meta_len])
        else:
            meta = bytes(self.buf[pos + META_INLINE_OFF : pos + META_INLINE_OFF + meta_len])
        tensors = [unpack_header(self.buf, pos + TENSORS_OFF + i * TENSOR_SLOT) for i in range(ntensors)]
        return fixed, tensors, meta

    def release(self) -> None:
        self.req_arena.release()
        self.resp_arena.release()
        self.buf.release()
