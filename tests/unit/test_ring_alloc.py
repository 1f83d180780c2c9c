"""`RingAllocator` against a model of its free space (hypothesis), and the zero-byte block.

The allocator is a ring: blocks go back to back after the newest one, restart at
offset 0 when they do not fit before the end, and space comes back from the
oldest block forward (a released block behind a held one stays taken). The
model below keeps its own list of blocks in allocation order and derives the
free space from it alone; the property is that ``alloc(n)`` succeeds exactly
when the model has ``n`` contiguous free bytes where the ring may place them,
and places the block there.
"""
from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from shmserve.shm.ring import RingAllocator
from tests.fuzz.test_decoders import settings  # noqa: F401  (loads the ci/long hypothesis profile)

SIZE = 256


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class RingModel:
    """The free space of a ring arena, from the blocks it holds (oldest first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held: list[list[int]] = []  # [start, end, released], in allocation order

    def place(self, nbytes: int, align: int) -> int | None:
        """Where a block of `nbytes` goes, or None when no free run of that length is open to it.

        A zero-byte block still takes one byte: a block must occupy space, or a ring full up to
        its tail could not be told from an empty one.
        """
        n = max(nbytes, 1)
        if not self.held:
            return 0 if n <= self.size else None
        head = self.held[-1][1]  # end of the newest block
        tail = self.held[0][0]  # start of the oldest block still held
        start = _align(head, align)
        if head > tail:  # held blocks run from tail up to head: free are [head, size) and [0, tail)
            if start + n <= self.size:
                return start
            return 0 if n <= tail else None
        return start if start + n <= tail else None  # wrapped: free is [head, tail)

    def add(self, start: int, nbytes: int) -> list[int]:
        block = [start, start + max(nbytes, 1), 0]
        self.held.append(block)
        return block

    def release(self, block: list[int]) -> None:
        block[2] = 1
        while self.held and self.held[0][2]:
            self.held.pop(0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, SIZE + 8), st.sampled_from([1, 4, 8, 64])),
        st.tuples(st.just("release"), st.integers(0, 1 << 16), st.just(0)),
    ),
    max_size=60,
)


@given(ops)
@example([("alloc", 0, 8), ("alloc", 16, 8)])  # a zero-byte block must not make the ring look full
@example([("alloc", 128, 8), ("alloc", 128, 8), ("release", 0, 0), ("alloc", 128, 8)])  # exact fits
@example([("alloc", 128, 8), ("alloc", 128, 8), ("release", 0, 0), ("alloc", 64, 8), ("alloc", 64, 8)])
@example([("alloc", 100, 1), ("alloc", 100, 1), ("release", 0, 0), ("alloc", 100, 1), ("alloc", 56, 1)])
@example([("alloc", 200, 1), ("alloc", 50, 1), ("release", 0, 0), ("alloc", 200, 1)])
def test_alloc_succeeds_exactly_when_the_model_has_room(ops: list[tuple[str, int, int]]) -> None:
    ring = RingAllocator(SIZE)
    model = RingModel(SIZE)
    tokens: list[tuple[list[int], list[int]]] = []  # (allocator token, model block), held by the caller
    for op, n, align in ops:
        if op == "release":
            if tokens:
                token, block = tokens.pop(n % len(tokens))
                ring.release(token)
                model.release(block)
            continue
        want = model.place(n, align)
        got = ring.alloc(n, align)
        if want is None:
            assert got is None, f"alloc({n}, align={align}) succeeded where the model has no room: {got}"
            continue
        assert got is not None, f"alloc({n}, align={align}) refused although [{want}, {want + max(n, 1)}) is free"
        assert got[0] == want and got[0] % align == 0
        assert got[1] - got[0] >= n and got[1] <= SIZE
        for token, _ in tokens:
            assert got[1] <= token[0] or got[0] >= token[1], f"{got} overlaps {token}"
        tokens.append((got, model.add(want, n)))
    # Once everything is released the whole arena is free again.
    for token, _ in tokens:
        ring.release(token)
    assert ring.in_use == 0
    assert ring.alloc(SIZE) is not None


def test_a_zero_byte_block_takes_room_and_later_blocks_still_fit() -> None:
    ring = RingAllocator(64)
    empty = ring.alloc(0)
    assert empty is not None and empty[1] > empty[0]  # it occupies space, so the ring is not "full"
    after = ring.alloc(16)
    assert after is not None and after[0] >= empty[1]
    ring.release(empty)
    ring.release(after)
    assert ring.in_use == 0 and ring.alloc(64) is not None


def test_zero_byte_blocks_alone_never_fill_the_ring() -> None:
    ring = RingAllocator(64)
    for _ in range(200):
        block = ring.alloc(0)
        assert block is not None
        other = ring.alloc(8)
        assert other is not None
        ring.release(block)
        ring.release(other)
    assert ring.in_use == 0
