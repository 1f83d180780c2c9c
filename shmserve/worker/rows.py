"""A channel's per-call ring work in one call: read every new request, publish a batch's results.

Two steps of the dispatch loop cost the interpreter most per call once batches fill: reading each
request descriptor (struct unpacking, a record per tensor) and writing each call's result (a numpy
view, a copy, the descriptor packed field by field). Here each is one call per channel: `consume`
reads every descriptor published since the worker's tail, and `publish_rows` writes the results of
a batch whose output is one C-contiguous array, one block of rows per call, then publishes them
all with one move of the head. Both run in C (``shmserve/_native/worker.c``) when it is built, and
in the Python below otherwise (``SHMSERVE_PURE_PYTHON=1``); tests/unit/test_worker_rows.py checks
that both leave the same bytes. The layout is `shmserve.shm.wire`'s, handed to C at import.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._native import load
from ..shm import wire

__all__ = ["Row", "Incoming", "consume", "consume_py", "publish_rows", "publish_rows_py", "NATIVE"]

#: (seq, block_off, block_len, row byte start in the output, nbytes, items, dequeue time): one call's share
Row = tuple[int, int, int, int, int, int, float]
#: (descriptor offset, seq, method, metadata, tensor headers, submit time, deadline, cancelled): one
#: request read; cancelled: its cancel word said the caller gave up when it was read
Incoming = tuple[int, int, int, bytes, list[wire.TensorMeta], float, float, bool]


def layout_args() -> tuple[Any, ...]:
    """What the C module's ``configure`` takes: wire's field tables, sizes and `wire.TensorMeta`."""
    consts = {
        "desc_size": wire.DESC_SIZE, "fixed_size": wire.DESC_FIXED.size, "tensors_off": wire.TENSORS_OFF,
        "tensor_slot": wire.TENSOR_SLOT, "meta_inline_off": wire.META_INLINE_OFF,
        "meta_inline_max": wire.META_INLINE_MAX, "max_tensors": wire.MAX_TENSORS, "max_ndim": wire.MAX_NDIM,
        "block_header": wire.BLOCK_HEADER, "flag_meta_in_arena": wire.FLAG_META_IN_ARENA,
        "block_busy": wire.BLOCK_BUSY,
    }
    return dict(wire.DESC_FIELDS), dict(wire.TENSOR_FIELDS), dict(wire.BLOCK_FIELDS), consts, wire.TensorMeta


def _configure(mod: Any) -> Any:
    """Hand the wire layout to the C module; None (the Python path) if it refuses it."""
    try:
        mod.configure(*layout_args())
    except (ValueError, KeyError, TypeError):  # a layout this C was not written for: stay in Python
        return None
    return mod


NATIVE = _configure(_mod) if (_mod := load("worker")) is not None else None


def consume_py(buf: Any, first: int, slots: int, tail: int, head_word: int, tail_word: int,
               arena: int, arena_len: int) -> tuple[int, list[Incoming]]:
    """Every request published on the ring since `tail` (new tail, records); stores the new tail.

    `buf` is the whole segment; `first` the byte offset of slot 0; `arena`/`arena_len` where the
    request arena lies in `buf` (out-of-line metadata is read from it)."""
    head = wire.U64.unpack_from(buf, head_word)[0]
    if tail >= head:
        return tail, []
    out: list[Incoming] = []
    arena_view = memoryview(buf)[arena : arena + arena_len]
    try:
        while tail < head:
            pos = first + (tail % slots) * wire.DESC_SIZE
            f, tensors, meta = wire.unpack_desc(buf, pos, arena_view, wire.RequestDesc)
            out.append((pos, f[0], f[1], meta, tensors, f[8], f[9], wire.is_cancelled(buf, pos, f[0])))
            tail += 1
    finally:
        arena_view.release()
    wire.U64.pack_into(buf, tail_word, tail)
    return tail, out


def publish_rows_py(buf: Any, first: int, slots: int, head: int, head_word: int, arena: int, src: np.ndarray,
                    src_off: int, rows: list[Row], dtype: bytes, kind: int, trailing: tuple[int, ...],
                    times: tuple[float, float, float, float], batch_size: int) -> int:
    """Write each call's result (its rows of `src`, C-contiguous) into its reserved block, its
    response descriptor (OK, one tensor, no metadata), then move the head once; the new head."""
    flat = src.reshape(-1).view(np.uint8)
    mem = memoryview(buf)
    dtype_str = dtype.decode()
    t1, t2, t3, t4 = times
    try:
        for seq, block_off, block_len, start, nbytes, items, dequeue in rows:
            at = arena + block_off
            wire.BLOCK.pack_into(mem, at, wire.BLOCK_BUSY, block_len)
            data = block_off + wire.BLOCK_HEADER
            share = flat[src_off + start : src_off + start + nbytes]
            mem[arena + data : arena + data + nbytes] = share.data
            part = share.view(src.dtype).reshape((items, *trailing))  # pack_desc reads its shape and nbytes
            wire.pack_desc(mem, first + (head % slots) * wire.DESC_SIZE, seq, wire.Status.OK, block_off, block_len,
                           data + nbytes, (dequeue, t1, t2, t3, t4), batch_size, [(part, kind, dtype_str)],
                           [data], b"")
            head += 1
    finally:
        mem.release()
    wire.U64.pack_into(buf, head_word, head)
    return head


#: `consume_py`, in C when built (bound here: the dispatch loop calls it with no Python frame between)
consume: Callable[[Any, int, int, int, int, int, int, int], tuple[int, list[Incoming]]] = (
    NATIVE.consume if NATIVE is not None else consume_py)
#: `publish_rows_py`, in C when built (bound here, as `consume`)
publish_rows: Callable[[Any, int, int, int, int, int, np.ndarray, int, list[Row], bytes, int, tuple[int, ...],
                        tuple[float, float, float, float], int], int] = (
    NATIVE.publish_rows if NATIVE is not None else publish_rows_py)
