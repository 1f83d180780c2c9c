"""Descriptor rings and data arenas: the binary layout of a channel.

A channel is one shared-memory segment between one client process and one
runner worker. Requests and responses each get a descriptor ring (fixed-size
records) and a data arena (tensor bytes). The client owns the segment.

Segment layout (all offsets in bytes)::

    0                header page (4096): see HEADER_FIELDS below
    4096             request descriptors   slots x 1024
    +slots*1024      response descriptors  slots x 1024
    page aligned     request arena         req_arena bytes  (tensors packed back to back)
    page aligned     response arena        resp_arena bytes (blocks with a 16-byte header)

Header page: u64 words, each index on its own 64-byte cache line where two
processes write them::

    0    magic 'SHMSRV01'      8   version (u64)
    16   slots                 24  req_arena size
    32   resp_arena size
    64   req_head   (client: requests published)
    128  req_tail   (worker: requests consumed)
    192  resp_head  (worker: responses published)
    256  resp_tail  (client: responses consumed)
    320  drained_at (worker, f64: the soonest deadline a call sent now may have
                    and be admitted; a client refuses a call due sooner at once)

Descriptor (1024 bytes), shared by requests and responses; fixed part
``<QIIQQIIQdddddIIQ24x`` (128 bytes)::

    0    seq         u64  call id, unique per client
    8    code        u32  request: method index; response: status
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
    128  meta        128 bytes inline metadata (when meta_len <= 128)
    256  tensors     8 x TensorHeader (96 bytes each)

``cancel`` is the one word written after publishing: the client sets it when
its caller stops waiting (a timeout, or the HTTP client hung up) and the
worker reads it just before the call would run, so abandoned calls never reach
the model. It names the call (seq + 1) because the slot may have been reused
by a later call by then; a stale mark then matches nothing.

All times are CLOCK_MONOTONIC seconds (`time.monotonic()`), which every
process on the host shares.

Publishing: data and descriptor are written first, then the head index,
then the peer's semaphore is posted. Consumers read the head and only then
the descriptors; on x86 stores are not reordered, and the semaphore post and
wait are full barriers everywhere.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable

MAGIC = 0x3130565253484D53  # b"SHMSRV01" little endian
VERSION = 2
HEADER_SIZE = 4096
DESC_SIZE = 1024
FIXED = struct.Struct("<QIIQQIIQdddddIIQ24x")
assert FIXED.size == 128
META_INLINE_OFF = 128
META_INLINE_MAX = 128
TENSORS_OFF = 256
TENSOR_SLOT = 96
MAX_TENSORS = 8
assert TENSORS_OFF + MAX_TENSORS * TENSOR_SLOT == DESC_SIZE

FLAG_META_IN_ARENA = 1
CANCEL_OFF = 96  # the request descriptor's cancel word (see above)

# Descriptor slots per ring of a channel a client creates (so at most this many calls in
# flight per (client, worker) pair); with DESC_SIZE it sets the rings' share of a segment.
DEFAULT_SLOTS = 1024

# header word offsets
H_MAGIC, H_VERSION, H_SLOTS, H_REQ_ARENA, H_RESP_ARENA = 0, 8, 16, 24, 32
H_REQ_HEAD, H_REQ_TAIL, H_RESP_HEAD, H_RESP_TAIL = 64, 128, 192, 256
H_DRAINED_AT = 320
F64 = struct.Struct("<d")

# response status codes
ST_OK = 0
ST_MODEL_ERROR = 1  # the method raised
ST_BAD_REQUEST = 2  # the call could not be decoded or matched
ST_EXPIRED = 3  # the deadline passed before the method ran
ST_TOO_LARGE = 4  # the result does not fit the response arena
ST_UNAVAILABLE = 5  # the worker is shutting down
ST_OVERLOADED = 6  # refused at admission: the queue ahead would not be served before the call's deadline

# response arena block header: u64 state, u64 length
BLOCK_HEADER = 16
BLOCK_FREE = 0
BLOCK_BUSY = 1

U64 = struct.Struct("<Q")


def page_align(n: int) -> int:
    return (n + 4095) & ~4095


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
        for off, value in (
            (H_MAGIC, MAGIC),
            (H_VERSION, VERSION),
            (H_SLOTS, self.slots),
            (H_REQ_ARENA, self.req_arena_size),
            (H_RESP_ARENA, self.resp_arena_size),
        ):
            U64.pack_into(buf, off, value)

    @classmethod
    def read_header(cls, buf: memoryview) -> "ChannelLayout":
        if U64.unpack_from(buf, H_MAGIC)[0] != MAGIC or U64.unpack_from(buf, H_VERSION)[0] != VERSION:
            raise ValueError("not a shmserve channel segment of this version")
        return cls(U64.unpack_from(buf, H_SLOTS)[0], U64.unpack_from(buf, H_REQ_ARENA)[0], U64.unpack_from(buf, H_RESP_ARENA)[0])


class RingAllocator:
    """Allocates variable-size blocks from a circular arena, in order.

    Blocks are handed out back to back (aligned) so consecutive calls sit next
    to each other; a block never wraps around the end: when it does not fit
    before the end, allocation restarts at offset 0. Blocks may be released
    in any order; space is reclaimed from the oldest block forward.
    Bookkeeping is private to the one process that allocates.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.head = 0  # next free byte
        self._live: deque[list[int]] = deque()  # [start, end, released]

    @property
    def tail(self) -> int:
        return self._live[0][0] if self._live else self.head

    @property
    def in_use(self) -> int:
        return len(self._live)

    def alloc(self, nbytes: int, align: int = 8) -> list[int] | None:
        """Reserve `nbytes`; returns the block token ([start, end, released]) or None when full now."""
        nbytes = max(nbytes, 1)  # zero-length blocks would make a full ring look empty
        if not self._live:
            self.head = 0
            start = 0
        else:
            start = (self.head + align - 1) // align * align
        tail = self.tail
        if self._live and self.head <= tail:
            # The live region runs past the end and restarts at 0: free space is [head, tail).
            if start + nbytes > tail:
                return None
        elif start + nbytes > self.size:
            # Does not fit before the end: restart at 0 if the oldest block leaves room there.
            if not self._live or nbytes > tail:
                return None
            start = 0
        block = [start, start + nbytes, 0]
        self._live.append(block)
        self.head = start + nbytes
        return block

    def release(self, block: list[int]) -> None:
        """Mark `block` free; reclaim every released block at the oldest end."""
        block[2] = 1
        live = self._live
        while live and live[0][2]:
            live.popleft()

    def reclaim(self, is_released: Callable[[list[int]], bool]) -> None:
        """Reclaim oldest blocks whose release another process recorded."""
        live = self._live
        while live and (live[0][2] or is_released(live[0])):
            live.popleft()
