"""The channel wire: every record that crosses a channel, declared once.

A channel is one shared-memory segment between one client process and one
runner worker. Requests and responses each get a descriptor ring (fixed-size
records) and a data arena (tensor bytes). The client owns the segment. The
functions here are the only code that knows where a field sits: everything
else reads and writes records through their names (`RequestDesc`,
`ResponseDesc`, `TensorMeta`, the block header, the header words; the
handshake's messages are declared in `shmserve.shm.handshake`). The
offsets below are computed from these declarations by
``tests/unit/test_wire.py``, which also checks them against
``docs/transport.md``.

Segment layout (all offsets in bytes)::

    0                header page (4096): the header words below
    4096             request descriptors   slots x 1024
    +slots*1024      response descriptors  slots x 1024
    page aligned     request arena         req_arena bytes  (tensors packed back to back)
    page aligned     response arena        resp_arena bytes (blocks with a 16-byte header)

Header page: u64 words (`HEADER_WORDS`; drained_at an f64), each cursor on its
own 64-byte cache line since two processes write them: 0 magic 'SHMSRV01',
8 version, 16 slots, 24 req_arena size, 32 resp_arena size, 64 req_head
(client), 128 req_tail (worker), 192 resp_head (worker), 256 resp_tail
(client), 320 drained_at (worker: the soonest deadline a call sent now may
have and be admitted; a client refuses a call due sooner at once).

Descriptor (1024 bytes), one layout for requests and responses, whose fields
mean different things (`RequestDesc`, `ResponseDesc`); fixed part
``<QIIQQIIQdddddIIQ24s`` (128 bytes)::

    0    seq         u64  call id, unique per client
    8    code        u32  request: method index; response: status (`Status`)
    12   flags       u32  FLAG_META_IN_ARENA
    16   block_off   u64  arena offset of this call's data block
    24   block_len   u64
    32   meta_len    u32  bytes of orjson metadata (non-tensor values, structure)
    36   ntensors    u32
    40   meta_off    u64  arena offset of the metadata when it is not inline
    48   t0          f64  request: submit time    response: dequeue time
    56   t1          f64  request: deadline (0: none)   response: batch start
    64   t2          f64  response: model start
    72   t3          f64  response: model end
    80   t4          f64  response: written
    88   batch_size  u32  response: items in the batch that served it
    92   reserved    u32
    96   cancel      u64  request: seq + 1 once the caller gave up on the call (0: still wanted)
    104  request_tag 24s  request: the caller's request ID (its first 24 bytes), NUL padded; all zero: none
    128  meta        128 bytes inline metadata (when meta_len <= 128)
    256  tensors     8 x TensorHeader (96 bytes each)

``cancel`` is the one word written after publishing: the client sets it when
its caller stops waiting (a timeout, or the HTTP client hung up) and the
worker reads it just before the call would run, so abandoned calls never reach
the model. It names the call (seq + 1) because the slot may have been reused
by a later call by then; a stale mark then matches nothing. The consumer of a
streaming call (a generator method) that stops iterating sets the same word,
and the worker reads it between items and closes the generator. That slot is
not reused while the stream runs: the worker serves nothing else meanwhile, so
no later call of the channel completes, and a client keeps at most ``slots``
calls in flight.

``request_tag`` names the HTTP request (``X-Request-ID``) a call serves, for the
worker's log lines about it. Each call packs the whole fixed part, so an earlier
tag never survives; the worker reads it (`read_request_tag`) only to log, while
the slot still holds the call's seq, so `RequestDesc` and no call pay for it.

TensorHeader (96 bytes, ``<QQ8sBBBxI8q``)::

    0      offset   u64   byte offset of the data in its arena (or in its extra segment)
    8      nbytes   u64   length of the data
    16     dtype    8s    numpy dtype string, ASCII, NUL padded ('<f4'), or 'bf16'
    24     ndim     u8    number of dimensions (<= 8)
    25     kind     u8    0 numpy ndarray, 1 torch CPU tensor, 2 raw buffer (never batched)
    26     segment  u8    0: the ring's arena; k: entry k - 1 of `EXTRA` at `EXTRA_OFF` (`shmserve.shm.extra`)
    27     padding  1
    28     generation u32 the entry's generation (low 32 bits) when the call was sent: a changed entry is refused
    32     shape    8 x i64, unused dims zero

Result block header (16 bytes, ``<QQ``), at the start of every block of the
response arena::

    0    state    u64  BLOCK_BUSY while the client uses it, BLOCK_FREE once it let go
    8    length   u64  the whole block, header included

Alignment, the same rules at both ends (`block_layout`): each tensor of a request starts at a multiple of
its item size and the block at a multiple of its largest one (`request_align`), so one call's tensor
directly follows the previous call's and a batch of calls is one view; result blocks start at a multiple of
`RESULT_ALIGN` and each result tensor at a multiple of it within the block's data; metadata that does not
fit inline follows the tensors at a multiple of `META_ALIGN`.

All times are CLOCK_MONOTONIC seconds (`time.monotonic()`), which every
process on the host shares.

Publishing: data and descriptor are written first, then the head index, then the peer's semaphore is posted.
Consumers read the head and only then the descriptors; on x86 stores are not reordered, and the semaphore
post and wait are full barriers everywhere.
"""
from __future__ import annotations

import re
import struct
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

MAGIC = int.from_bytes(b"SHMSRV01", "little")  # the first 8 bytes of a segment read "SHMSRV01"
VERSION = 2
HEADER_SIZE = 4096
CACHE_LINE = 64
PAGE = 4096

# Descriptor slots per ring of a channel a client creates (so at most this many calls in
# flight per (client, worker) pair); with DESC_SIZE it sets the rings' share of a segment.
DEFAULT_SLOTS = 1024


class Status(IntEnum):
    """A response's status (the descriptor's ``code``); the values are the wire's integers."""

    OK = 0
    MODEL_ERROR = 1  # the method raised
    BAD_REQUEST = 2  # the call could not be decoded or matched
    EXPIRED = 3  # the deadline passed before the method ran
    TOO_LARGE = 4  # the result does not fit the response arena
    UNAVAILABLE = 5  # the worker is shutting down
    OVERLOADED = 6  # refused at admission: the queue ahead would not be served before the call's deadline
    # One item of a streaming call (a generator method); more responses with the same seq follow, and the
    # call ends with an OK response holding None (or an error status). The client keeps the call's
    # request block until that final response: the generator may still read its arguments.
    ITEM = 7


def record_fields(fmt: str, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(byte offset, size) of each named field of little-endian struct `fmt`: padding ``x`` has no
    name; a repeat count makes one field of that many values (``8q``), or of that many bytes (``8s``)."""
    if not fmt.startswith("<"):
        raise ValueError("wire formats are little endian, without native alignment ('<')")
    out: dict[str, tuple[int, int]] = {}
    pos = 0
    fields = iter(names)
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        size = struct.calcsize(f"<{count}{code}")
        if code != "x":
            name = next(fields, None)
            if name is None:
                raise ValueError(f"{fmt!r} has more fields than the {len(names)} names given")
            out[name] = (pos, size)
        pos += size
    if next(fields, None) is not None:
        raise ValueError(f"more names than fields in {fmt!r}")
    return out


# -- the header page ---------------------------------------------------------------------------
U64 = struct.Struct("<Q")
F64 = struct.Struct("<d")
#: byte offset of each header word; the cursors each on a cache line of their own
HEADER_WORDS: dict[str, int] = {
    "magic": 0, "version": 8, "slots": 16, "req_arena": 24, "resp_arena": 32,
    "req_head": 1 * CACHE_LINE, "req_tail": 2 * CACHE_LINE,
    "resp_head": 3 * CACHE_LINE, "resp_tail": 4 * CACHE_LINE,
    "drained_at": 5 * CACHE_LINE,
}
H_MAGIC, H_VERSION, H_SLOTS = HEADER_WORDS["magic"], HEADER_WORDS["version"], HEADER_WORDS["slots"]
H_REQ_ARENA, H_RESP_ARENA = HEADER_WORDS["req_arena"], HEADER_WORDS["resp_arena"]
H_REQ_HEAD, H_REQ_TAIL = HEADER_WORDS["req_head"], HEADER_WORDS["req_tail"]
H_RESP_HEAD, H_RESP_TAIL = HEADER_WORDS["resp_head"], HEADER_WORDS["resp_tail"]
H_DRAINED_AT = HEADER_WORDS["drained_at"]


def page_align(n: int) -> int:
    """`n` rounded up to a whole page."""
    return (n + PAGE - 1) & ~(PAGE - 1)


class ChannelLayout:
    """Offsets of the parts of a channel segment of given sizes."""

    def __init__(self, slots: int, req_arena: int, resp_arena: int) -> None:
        self.slots = slots
        self.req_arena_size = req_arena
        self.resp_arena_size = resp_arena
        self.req_desc = HEADER_SIZE
        self.resp_desc = self.req_desc + slots * DESC_SIZE
        self.req_arena = page_align(self.resp_desc + slots * DESC_SIZE)
        self.resp_arena = page_align(self.req_arena + req_arena)
        self.total = page_align(self.resp_arena + resp_arena)

    def write_header(self, buf: memoryview) -> None:
        """Write the header words a new segment starts with (its cursors stay zero)."""
        for off, value in ((H_MAGIC, MAGIC), (H_VERSION, VERSION), (H_SLOTS, self.slots),
                           (H_REQ_ARENA, self.req_arena_size), (H_RESP_ARENA, self.resp_arena_size)):
            U64.pack_into(buf, off, value)

    @classmethod
    def read_header(cls, buf: memoryview) -> "ChannelLayout":
        """The layout a segment's header describes; ValueError when it is not a channel of this version."""
        if U64.unpack_from(buf, H_MAGIC)[0] != MAGIC or U64.unpack_from(buf, H_VERSION)[0] != VERSION:
            raise ValueError("not a shmserve channel segment of this version")
        return cls(U64.unpack_from(buf, H_SLOTS)[0], U64.unpack_from(buf, H_REQ_ARENA)[0],
                   U64.unpack_from(buf, H_RESP_ARENA)[0])


# -- descriptors --------------------------------------------------------------------------------
DESC_SIZE = 1024
DESC_FIXED = struct.Struct("<QIIQQIIQdddddIIQ24s")
# Reads the fixed part less request_tag (`RequestDesc`, `ResponseDesc`): no call builds a bytes for it.
_DESC_READ = struct.Struct(DESC_FIXED.format[:-3] + "24x")
REQUEST_TAG_MAX = 24
META_INLINE_OFF = DESC_FIXED.size
META_INLINE_MAX = 128
TENSORS_OFF = META_INLINE_OFF + META_INLINE_MAX
TENSOR_SLOT = 96
MAX_TENSORS = 8
FLAG_META_IN_ARENA = 1


class RequestDesc(NamedTuple):
    """A request descriptor's fixed part, field for field in `DESC_FIXED` order."""

    seq: int
    method: int  # index into the worker's method table
    flags: int
    block_off: int
    block_len: int
    meta_len: int
    ntensors: int
    meta_off: int
    submit: float
    deadline: float  # 0: none
    unused_t2: float
    unused_t3: float
    unused_t4: float
    unused_count: int
    reserved: int
    cancel: int  # seq + 1 once the caller gave up


class ResponseDesc(NamedTuple):
    """A response descriptor's fixed part, field for field in `DESC_FIXED` order."""

    seq: int
    status: int  # a `Status` value
    flags: int
    block_off: int
    block_len: int
    meta_len: int
    ntensors: int
    meta_off: int
    dequeue: float
    batch_start: float
    model_start: float
    model_end: float
    written: float
    batch_size: int
    reserved: int
    unused_cancel: int


DESC_FORMAT_NAMES = ("seq", "code", "flags", "block_off", "block_len", "meta_len", "ntensors", "meta_off",
                     "t0", "t1", "t2", "t3", "t4", "batch_size", "reserved", "cancel", "request_tag")
#: (offset, size) of each fixed field of a descriptor, by the names docs/transport.md uses
DESC_FIELDS = record_fields(DESC_FIXED.format, DESC_FORMAT_NAMES)
CANCEL_OFF = DESC_FIELDS["cancel"][0]
TAG_OFF = DESC_FIELDS["request_tag"][0]
SEQ_OFF = DESC_FIELDS["seq"][0]
assert TENSORS_OFF + MAX_TENSORS * TENSOR_SLOT == DESC_SIZE
assert DESC_FIELDS["request_tag"][1] == REQUEST_TAG_MAX and _DESC_READ.size == DESC_FIXED.size
assert len(RequestDesc._fields) == len(ResponseDesc._fields) == len(DESC_FORMAT_NAMES) - 1  # less request_tag

# -- tensor headers -------------------------------------------------------------------------------
TENSOR_HEADER = struct.Struct("<QQ8sBBBxI8q")
TENSOR_FIELDS = record_fields(TENSOR_HEADER.format, ("offset", "nbytes", "dtype", "ndim", "kind", "segment", "generation",
                                                     "shape"))
MAX_NDIM = 8
EXTRA = struct.Struct("<QQ112s")  # an extra segment entry: generation (0: empty), size, object name
EXTRA_FIELDS, EXTRA_OFF, EXTRA_SLOTS = record_fields(EXTRA.format, ("generation", "size", "name")), 1024, 8
assert TENSOR_HEADER.size == TENSOR_SLOT and EXTRA_OFF + EXTRA_SLOTS * EXTRA.size <= HEADER_SIZE


class TensorMeta(NamedTuple):
    """A decoded TensorHeader."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    kind: int
    segment: int = 0  # 0: the ring's arena; k: the channel's extra segment k (`EXTRA`)
    generation: int = 0  # of that segment's entry when the call was sent (low 32 bits)


_NO_DIMS = (0,) * MAX_NDIM


def pack_tensor(buf: Any, pos: int, offset: int, arr: np.ndarray, kind: int, dtype_str: str,
                segment: tuple[int, int] = (0, 0)) -> None:
    """Write the TensorHeader of `arr` (its data at `offset` of the arena, or of extra (segment, generation))."""
    shape = arr.shape
    ndim = len(shape)
    TENSOR_HEADER.pack_into(buf, pos, offset, arr.nbytes, dtype_str.encode(), ndim, kind, *segment, *shape, *_NO_DIMS[ndim:])


_unpack_tensor = TENSOR_HEADER.unpack_from
_new = tuple.__new__  # builds a record from its fields without the NamedTuple's Python-level __new__ (hot path)


def unpack_tensor(buf: Any, pos: int) -> TensorMeta:
    """Read the TensorHeader at byte `pos`."""
    f = _unpack_tensor(buf, pos)
    return _new(TensorMeta, (f[0], f[1], f[2].rstrip(b"\0").decode(), f[7 : 7 + f[3]], f[4], f[5], f[6]))


Tensor = tuple[np.ndarray, int, str]  # (array, kind, dtype string): one tensor on its way in


def pack_desc(buf: Any, pos: int, seq: int, code: int, block_off: int, block_len: int, meta_off: int,
              times: tuple[float, ...], batch_size: int,
              tensors: list[Tensor], offsets: list[int], meta: bytes, tag: bytes = b"",
              segments: list[tuple[int, int]] | None = None) -> None:
    """Write one descriptor at byte `pos`: the fixed part, the tensor headers and inline metadata.

    `times` are t0..t4 (a request: submit, deadline, then zeros; a response: dequeue, batch
    start, model start, model end, written); flags, meta_len and ntensors are derived here.
    `tag`: a request's ``request_tag`` (24 bytes kept; empty: none); `segments`: each tensor's (None: 0s).
    """
    flags = 0
    n = len(meta)
    if n > META_INLINE_MAX:
        flags = FLAG_META_IN_ARENA
    elif n:
        buf[pos + META_INLINE_OFF : pos + META_INLINE_OFF + n] = meta
    DESC_FIXED.pack_into(buf, pos, seq, code, flags, block_off, block_len, n, len(tensors), meta_off,
                         *times, batch_size, 0, 0, tag)
    tpos = pos + TENSORS_OFF
    for i, ((arr, kind, dtype_str), off) in enumerate(zip(tensors, offsets)):
        pack_tensor(buf, tpos, off, arr, kind, dtype_str, segments[i] if segments else (0, 0))
        tpos += TENSOR_SLOT


_unpack_desc = _DESC_READ.unpack_from


def unpack_desc(buf: Any, pos: int, arena: Any, record: type[RequestDesc] | type[ResponseDesc]
                ) -> tuple[Any, list[TensorMeta], bytes]:
    """Read the descriptor at byte `pos` as `record`: (fixed fields, tensor headers, metadata bytes).

    Out-of-line metadata is read from `arena`, the data arena of the descriptor's ring.
    """
    f = _unpack_desc(buf, pos)  # by position: this module is where the positions live
    meta_len = f[5]
    if not meta_len:
        meta = b""
    elif f[2] & FLAG_META_IN_ARENA:
        meta = bytes(arena[f[7] : f[7] + meta_len])
    else:
        meta = bytes(buf[pos + META_INLINE_OFF : pos + META_INLINE_OFF + meta_len])
    tpos = pos + TENSORS_OFF
    tensors = []
    for _ in range(f[6]):  # ntensors
        tensors.append(unpack_tensor(buf, tpos))
        tpos += TENSOR_SLOT
    fixed = _new(record, f)
    return fixed, tensors, meta


def read_request_tag(buf: Any, pos: int, seq: int) -> str:
    """The ``request_tag`` of request `seq` at byte `pos` ("" when it has none, or when the slot holds
    a later call by now: a caller that gave up on `seq` may have reused it)."""
    raw = bytes(buf[pos + TAG_OFF : pos + TAG_OFF + REQUEST_TAG_MAX])
    # seq is read after the tag: a client rewriting the slot changes seq before it writes the tag
    if U64.unpack_from(buf, pos + SEQ_OFF)[0] != seq:
        return ""
    return raw.rstrip(b"\0").decode("ascii", "replace")


def mark_cancelled(buf: Any, pos: int, seq: int) -> None:
    """Mark the request at byte `pos` (call `seq`) abandoned by its caller."""
    U64.pack_into(buf, pos + CANCEL_OFF, seq + 1)


def is_cancelled(buf: Any, pos: int, seq: int) -> bool:
    """Whether the caller of request `seq` at byte `pos` gave up on it."""
    return bool(U64.unpack_from(buf, pos + CANCEL_OFF)[0] == seq + 1)


# -- data blocks ----------------------------------------------------------------------------------
BLOCK = struct.Struct("<QQ")
BLOCK_FIELDS = record_fields(BLOCK.format, ("state", "length"))
_STATE = BLOCK_FIELDS["state"][0]
BLOCK_HEADER = BLOCK.size
BLOCK_FREE = 0
BLOCK_BUSY = 1
RESULT_ALIGN = 64  # result blocks, and the tensors within their data, start on a cache line
META_ALIGN = 8  # out-of-line metadata starts on an 8-byte boundary after the tensors


def write_block_header(arena: Any, off: int, length: int) -> None:
    """Start a result block of `length` bytes (header included) at `off`, in use by the client."""
    BLOCK.pack_into(arena, off, BLOCK_BUSY, length)


def block_released(arena: Any, off: int) -> bool:
    """Whether the client let go of the result block at `off`."""
    return bool(U64.unpack_from(arena, off + _STATE)[0] == BLOCK_FREE)


def release_block(arena: Any, off: int) -> None:
    """Hand the result block at `off` back to the worker (it reclaims it when it next allocates)."""
    U64.pack_into(arena, off + _STATE, BLOCK_FREE)


def request_align(tensors: list[Tensor]) -> int:
    """Alignment of a request's block: the largest item size among its tensors (8 without tensors)."""
    return max((t[0].dtype.itemsize for t in tensors), default=8) or 1


def layout(tensors: list[Tensor], base: int, align_to: int | None = None) -> tuple[list[int], int]:
    """Offsets (relative to a block starting at `base`) for tensors packed back to back.

    Each tensor starts at a multiple of its item size (or `align_to`), so a
    tensor of one call directly follows the previous call's when sizes allow.
    Returns (offsets, end) where end is relative too.
    """
    if len(tensors) == 1 and base == 0:  # the common call: one tensor at the block's start
        return [0], tensors[0][0].nbytes
    offsets = []
    pos = 0
    for arr, _kind, _dt in tensors:
        a = align_to or max(arr.dtype.itemsize, 1)
        absolute = base + pos
        absolute = (absolute + a - 1) // a * a
        pos = absolute - base
        offsets.append(pos)
        pos += arr.nbytes
    return offsets, pos


def block_layout(tensors: list[Tensor], meta_len: int, align_to: int | None = None) -> tuple[list[int], int, int]:
    """Where a block's parts go: (tensor offsets, metadata offset, bytes the block's data needs).

    Requests pass no `align_to` (item-size alignment), results `RESULT_ALIGN`; the
    metadata takes room only when it does not fit the descriptor inline.
    """
    offsets, end = layout(tensors, 0, align_to)
    meta_off = (end + META_ALIGN - 1) & ~(META_ALIGN - 1)
    return offsets, meta_off, meta_off + meta_len if meta_len > META_INLINE_MAX else end
