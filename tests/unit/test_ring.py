import random

import numpy as np
import pytest

from shmserve.shm.ring import DESC_SIZE, ChannelLayout, RingAllocator


def test_blocks_are_back_to_back_then_wrap():
    a = RingAllocator(100)
    b1, b2 = a.alloc(40), a.alloc(40)
    assert (b1[0], b1[1], b2[0], b2[1]) == (0, 40, 40, 80)
    assert a.alloc(30) is None  # would cross the end, and the start is still in use
    a.release(b1)
    b3 = a.alloc(30)
    assert b3[:2] == [0, 30]  # restarted at 0 instead of splitting
    assert a.alloc(15) is None  # 30..45 overlaps b2 (40..80)
    a.release(b2)
    assert a.alloc(15)[:2] == [32, 47]  # aligned to 8


def test_out_of_order_release_reclaims_only_from_the_oldest():
    a = RingAllocator(100)
    b1, b2, b3 = a.alloc(30), a.alloc(30), a.alloc(30)
    a.release(b2)
    assert a.in_use == 3  # b1 still holds the oldest end
    a.release(b1)
    assert a.in_use == 1 and a.tail == b3[0]


def test_empty_ring_restarts_at_zero():
    a = RingAllocator(100)
    b = a.alloc(60)
    a.release(b)
    assert a.alloc(60)[0] == 0


def test_too_large_never_fits():
    a = RingAllocator(100)
    assert a.alloc(101) is None
    assert a.alloc(100) is not None


@pytest.mark.parametrize("seed", range(5))
def test_randomized_blocks_never_overlap(seed):
    rng = random.Random(seed)
    a = RingAllocator(1000)
    live = []
    for _ in range(20000):
        if live and rng.random() < 0.5:
            a.release(live.pop(rng.randrange(len(live))))
        else:
            block = a.alloc(rng.randint(0, 300), rng.choice([1, 4, 8, 64]))
            if block is not None:
                assert 0 <= block[0] <= block[1] <= 1000
                for other in live:
                    assert block[1] <= other[0] or block[0] >= other[1]
                live.append(block)


def test_reclaim_uses_the_callback():
    a = RingAllocator(100)
    b1, b2 = a.alloc(10), a.alloc(10)
    freed = {b1[0]}
    a.reclaim(lambda blk: blk[0] in freed)
    assert a.in_use == 1 and a.tail == b2[0]


def test_channel_layout_header_roundtrip():
    lay = ChannelLayout(16, 1 << 20, 1 << 19)
    buf = memoryview(bytearray(lay.total))
    lay.write_header(buf)
    back = ChannelLayout.read_header(buf)
    assert (back.slots, back.req_arena_size, back.resp_arena_size) == (16, 1 << 20, 1 << 19)
    assert lay.req_arena % 4096 == 0 and lay.resp_arena % 4096 == 0
    assert lay.resp_desc - lay.req_desc == 16 * DESC_SIZE
    with pytest.raises(ValueError):
        ChannelLayout.read_header(memoryview(bytearray(4096)))


def test_channel_descriptor_roundtrip():
    from shmserve.shm.channel import ChannelView
    from shmserve.shm.message import encode_call, layout

    class FakeSegment:
        def __init__(self, n):
            self.buf = bytearray(n)

    lay = ChannelLayout(4, 1 << 16, 1 << 16)
    seg = FakeSegment(lay.total)
    v = ChannelView(seg, lay)  # type: ignore[arg-type]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensors, meta = encode_call((x,), {"tag": "a" * 300})
    offsets, _ = layout(tensors, 0)
    v.write_desc(v.req_slot(5), (7, 2, 0, 48, 64, 1.5, 2.5, 0.0, 0.0, 0.0, 3), tensors, offsets, meta)
    v.req_arena[64 : 64 + len(meta)] = meta  # metadata over 128 bytes lives in the arena
    fixed, tmetas, meta_back = v.read_desc(v.req_slot(5), v.req_arena)
    assert fixed[0] == 7 and fixed[1] == 2 and fixed[8] == 1.5 and fixed[9] == 2.5 and fixed[13] == 3
    assert meta_back == meta
    assert tmetas[0].shape == (3, 4) and tmetas[0].dtype == "<f4" and tmetas[0].nbytes == 48
