"""The calling side's ring work: a call's data, descriptor and head out; the responses in.

`publish_call` runs the C accelerator ``shmserve._native._client`` when it is
built (one C call, the head stored with release ordering: see
docs/transport.md, Memory ordering), and its Python twin, `Ring.copy_in` then
`Ring.publish`, otherwise: with ``SHMSERVE_PURE_PYTHON=1``, when it is not
built, and for a tensor that is not a plain copy (not C-contiguous, or not
little endian), which the C side refuses before writing anything. The C module
takes every position from `shmserve.shm.wire` at import (`native_fields`).

`publisher` binds that step and the worker's doorbell post to one link: the
C ``submit`` (publish, then ``sem_post`` on its own handle of the doorbell)
behind a `functools.partial`, so a call publishes with no Python frame, or
`publish_call` and `Signal.post`, its twin.

`consumer` gives one link's read of every response published since its cursor:
one C call (``consume``, configured with `consume_fields`), and with
`Ring.consume`, its Python twin, otherwise: both return the same records.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from . import _native
from .shm import wire
from .shm.channel import Ring
from .shm.wire import Tensor

__all__ = ["consume_fields", "consumer", "native_fields", "native_pending", "publish_call", "publisher"]


def native_fields() -> dict[str, int]:
    """The request descriptor's and tensor header's positions, from `shmserve.shm.wire` (the one
    declaration of the layout), as ``shmserve._native._client.configure`` takes them."""
    d, t = wire.DESC_FIELDS, wire.TENSOR_FIELDS
    out = {name: d[name][0] for name in ("seq", "code", "flags", "block_off", "block_len", "meta_len", "ntensors",
                                         "meta_off", "t0", "t1", "request_tag")}
    out.update({f"t_{name}": t[name][0] for name in ("offset", "nbytes", "dtype", "ndim", "kind", "shape")})
    out.update(fixed_size=wire.DESC_FIXED.size, tag_max=wire.REQUEST_TAG_MAX, meta_inline_off=wire.META_INLINE_OFF,
               meta_inline_max=wire.META_INLINE_MAX, tensors_off=wire.TENSORS_OFF, tensor_slot=wire.TENSOR_SLOT,
               desc_size=wire.DESC_SIZE, max_tensors=wire.MAX_TENSORS, flag_meta_in_arena=wire.FLAG_META_IN_ARENA,
               t_dtype_max=t["dtype"][1], t_max_ndim=wire.MAX_NDIM)
    return out


def consume_fields() -> tuple[Any, ...]:
    """What ``shmserve._native._client.configure_consume`` takes, from `shmserve.shm.wire`: the fixed
    fields in `ResponseDesc` order as (offset, struct code), the tensor header's fields, the sizes,
    and the two record types."""
    codes = wire.DESC_FIXED.format.lstrip("<")
    names = wire.DESC_FORMAT_NAMES[: len(wire.ResponseDesc._fields)]
    fixed = [(wire.DESC_FIELDS[name][0], code) for name, code in zip(names, codes)]
    consts = dict(desc_size=wire.DESC_SIZE, tensors_off=wire.TENSORS_OFF, tensor_slot=wire.TENSOR_SLOT,
                  meta_inline_off=wire.META_INLINE_OFF, max_tensors=wire.MAX_TENSORS, max_ndim=wire.MAX_NDIM,
                  flag_meta_in_arena=wire.FLAG_META_IN_ARENA,
                  **{f"i_{name}": names.index(name) for name in ("flags", "meta_len", "ntensors", "meta_off")})
    return fixed, dict(wire.TENSOR_FIELDS), consts, wire.ResponseDesc, wire.TensorMeta


def load_native() -> Any:
    """The C module, configured with `native_fields` (None: not built, or pure Python forced)."""
    mod = _native.load("client")
    if mod is not None:
        mod.configure(native_fields())
    return mod


def load_consume(mod: Any) -> Any:
    """The C module's ``consume``, configured with `consume_fields` (None: no module, or a layout
    this C was not written for: responses are then read in Python)."""
    if mod is None:
        return None
    try:
        mod.configure_consume(*consume_fields())
    except (ValueError, KeyError, TypeError):
        return None
    return mod.consume


_NATIVE = load_native()
_CONSUME = load_consume(_NATIVE)


#: ``consume(tail)``: every response published on a ring since `tail`, marked consumed
Consumer = Callable[[int], list[tuple[int, Any, list[wire.TensorMeta], bytes]]]


def consumer(ring: Ring[Any]) -> Consumer:
    """The read of one link's response ring (`Consumer`): the C ``consume`` behind a
    `functools.partial` (no Python frame per read), or `Ring.consume`."""
    native = _CONSUME
    if native is None:
        return ring.consume
    return partial(native, ring.buf, ring.arena, ring.first, ring.slots, ring.head_word, ring.tail_word)


def publish_call(ring: Ring[Any], n: int, seq: int, code: int, base: int, block_len: int, tensors: list[Tensor],
                 offsets: list[int], meta: bytes, meta_off: int, deadline: float | None, tag: bytes) -> tuple[float, int]:
    """Copy call `seq` (method `code`) into its block at arena offset `base` and publish it as record
    `n` of `ring`; `offsets`/`meta_off` are relative to the block. Returns (submit time, descriptor
    offset). The caller posts the worker."""
    native = _NATIVE
    if native is not None:
        submit = time.monotonic()
        pos = ring.first + (n % ring.slots) * wire.DESC_SIZE  # Ring.slot, inlined: once per call
        if native.publish(ring.buf, ring.arena, pos, ring.head_word, n, base, tensors, offsets, meta, meta_off,
                          seq, code, block_len, submit, deadline or 0.0, tag):
            return submit, pos
    ring.copy_in(base, tensors, offsets, meta, meta_off)
    submit = time.monotonic()
    pos = ring.publish(n, seq, code, base, block_len, base + meta_off, (submit, deadline or 0.0, 0.0, 0.0, 0.0), 0,
                       tensors, [base + o for o in offsets] if base else offsets, meta, tag)
    return submit, pos


#: ``publish(n, seq, code, base, block_len, tensors, offsets, meta, meta_off, deadline, tag, post)`` ->
#: (submit time, descriptor offset): `publish_call` for one link's ring, then its doorbell posted if `post`
Publisher = Callable[[int, int, int, int, int, list[Tensor], list[int], bytes, int, float | None, bytes, bool],
                     tuple[float, int]]


def publisher(ring: Ring[Any], doorbell: Any) -> Publisher:
    """One link's publish step: the C ``submit`` bound to `ring` and `doorbell` (a `Signal`, or a
    test's object with ``post()``), or the Python twin when the C module is not there."""

    def twin(n: int, seq: int, code: int, base: int, block_len: int, tensors: list[Tensor], offsets: list[int],
             meta: bytes, meta_off: int, deadline: float | None, tag: bytes, post: bool) -> tuple[float, int]:
        submit, pos = publish_call(ring, n, seq, code, base, block_len, tensors, offsets, meta, meta_off, deadline, tag)
        if post:
            doorbell.post()
        return submit, pos

    native = _NATIVE
    if native is None:
        return twin
    bell = native.open_doorbell(getattr(doorbell, "name", None))  # None: posted through doorbell.post()
    return partial(native.submit, ring.buf, ring.arena, ring.first, ring.slots, ring.head_word, bell, doorbell, twin)


def native_pending() -> Any:
    """The C twin of `shmserve.link.Pending` (None: the C module is not there)."""
    return None if _NATIVE is None else _NATIVE.Pending
