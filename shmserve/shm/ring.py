"""The allocator of a channel's data arenas (the layout itself is declared in `shmserve.shm.wire`).

Each arena has one allocating process: the client allocates request blocks,
the worker result blocks. Blocks are handed out in order and freed in any
order, so the bookkeeping needs no cross-process atomics.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

# The layout's names, for code that imports them from here; `shmserve.shm.wire` declares them.
from .wire import (  # noqa: F401
    BLOCK_BUSY,
    BLOCK_FREE,
    BLOCK_HEADER,
    CANCEL_OFF,
    DEFAULT_SLOTS,
    DESC_SIZE,
    F64,
    FLAG_META_IN_ARENA,
    H_DRAINED_AT,
    H_MAGIC,
    H_REQ_ARENA,
    H_REQ_HEAD,
    H_REQ_TAIL,
    H_RESP_ARENA,
    H_RESP_HEAD,
    H_RESP_TAIL,
    H_SLOTS,
    H_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_TENSORS,
    META_INLINE_MAX,
    META_INLINE_OFF,
    TENSOR_SLOT,
    TENSORS_OFF,
    U64,
    VERSION,
    ChannelLayout,
    Status,
    page_align,
)
from .wire import DESC_FIXED as FIXED  # noqa: F401

ST_OK = Status.OK
ST_MODEL_ERROR = Status.MODEL_ERROR
ST_BAD_REQUEST = Status.BAD_REQUEST
ST_EXPIRED = Status.EXPIRED
ST_TOO_LARGE = Status.TOO_LARGE
ST_UNAVAILABLE = Status.UNAVAILABLE
ST_OVERLOADED = Status.OVERLOADED
ST_ITEM = Status.ITEM


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
        if nbytes < 1:
            nbytes = 1  # zero-length blocks would make a full ring look empty
        live = self._live
        if not live:  # nothing in use (a lone caller's every call): start over at 0, where it is warm
            self.head = 0
            if nbytes > self.size:
                return None
            block = [0, nbytes, 0]
            live.append(block)
            self.head = nbytes
            return block
        head = self.head
        start = (head + align - 1) // align * align
        tail = live[0][0]
        if head <= tail:
            # The live region runs past the end and restarts at 0: free space is [head, tail).
            if start + nbytes > tail:
                return None
        elif start + nbytes > self.size:
            # Does not fit before the end: restart at 0 if the oldest block leaves room there.
            if nbytes > tail:
                return None
            start = 0
        end = start + nbytes
        block = [start, end, 0]
        live.append(block)
        self.head = end
        return block

    def release(self, block: list[int]) -> None:
        """Mark `block` free; reclaim every released block at the oldest end."""
        block[2] = 1
        live = self._live
        while live and live[0][2]:
            live.popleft()

    def reclaim_freed(self, arena: memoryview, free: int) -> None:
        """Reclaim oldest blocks whose first word in `arena` (the block header's state, written by the
        other process) reads `free`: `reclaim` with that test inline (the worker's every result)."""
        live = self._live
        unpack = U64.unpack_from
        while live and (live[0][2] or unpack(arena, live[0][0])[0] == free):
            live.popleft()

    def reclaim(self, is_released: Callable[[list[int]], bool]) -> None:
        """Reclaim oldest blocks whose release another process recorded."""
        live = self._live
        while live and (live[0][2] or is_released(live[0])):
            live.popleft()
