"""The C publish of a call (`shmserve._native._client`) against its Python twin (`Ring.copy_in` +
`Ring.publish`): the same segment bytes, for every kind of call; refusals write nothing."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shmserve import publish
from shmserve.shm import wire
from shmserve.shm.channel import Ring
from shmserve.shm.wire import RequestDesc, layout, request_align
from shmserve.tensors import to_wire

native = publish.load_native() if os.environ.get("SHMSERVE_PURE_PYTHON", "") in ("", "0") else None
needs_c = pytest.mark.skipif(native is None, reason="shmserve._native._client is not built (or pure Python forced)")

SLOTS = 4
HEAD = 64  # the head word's offset in this test's buffer (a header page as the segment's)
FIRST = 4096
ARENA = 1 << 16


def _ring(seed: int) -> tuple[bytearray, bytearray, Ring[RequestDesc]]:
    rng = np.random.default_rng(seed)
    buf = bytearray(rng.integers(0, 256, FIRST + SLOTS * wire.DESC_SIZE, dtype=np.uint8).tobytes())
    arena = bytearray(rng.integers(0, 256, ARENA, dtype=np.uint8).tobytes())
    return buf, arena, Ring(memoryview(buf), FIRST, SLOTS, HEAD, HEAD + 64, memoryview(arena), RequestDesc)


def _python(ring: Ring[RequestDesc], n: int, base: int, tensors, offsets, meta, meta_off, seq, code, block_len,
            t0, t1, tag) -> int:
    ring.copy_in(base, tensors, offsets, meta, meta_off)
    return ring.publish(n, seq, code, base, block_len, base + meta_off, (t0, t1, 0.0, 0.0, 0.0), 0, tensors,
                        [base + o for o in offsets], meta, tag)


def _both(values: list[np.ndarray], meta: bytes, n: int = 5, base: int = 128, tag: bytes = b"req-1",
          expect_c: bool = True) -> tuple[bytes, bytes]:
    tensors = [to_wire(v, f"argument {i}") for i, v in enumerate(values)]
    offsets, end = layout(tensors, 0)
    align = request_align(tensors)
    base = (base + align - 1) // align * align
    meta_off = (end + wire.META_ALIGN - 1) & ~(wire.META_ALIGN - 1)
    block_len = meta_off + len(meta) if len(meta) > wire.META_INLINE_MAX else end
    buf_p, arena_p, ring_p = _ring(n)
    buf_c, arena_c, ring_c = _ring(n)
    _python(ring_p, n, base, tensors, offsets, meta, meta_off, 77 + n, 3, block_len, 1.5, 2.5, tag)
    assert native is not None
    before = bytes(buf_c), bytes(arena_c)
    wrote = native.publish(ring_c.buf, ring_c.arena, ring_c.slot(n), HEAD, n, base, tensors, offsets, meta, meta_off,
                           77 + n, 3, block_len, 1.5, 2.5, tag)
    assert wrote is expect_c
    if not wrote:
        assert (bytes(buf_c), bytes(arena_c)) == before  # a refusal writes nothing
        _python(ring_c, n, base, tensors, offsets, meta, meta_off, 77 + n, 3, block_len, 1.5, 2.5, tag)
    assert struct.unpack_from("<Q", buf_c, HEAD)[0] == n + 1
    return bytes(buf_p) + bytes(arena_p), bytes(buf_c) + bytes(arena_c)


@needs_c
def test_the_hot_call_one_float32_tensor_writes_the_same_bytes():
    x = np.arange(784, dtype=np.float32).reshape(1, 784)
    py, c = _both([x], b"")
    assert py == c


@needs_c
@pytest.mark.parametrize("meta", [b"", b'{"a":[{"v":1}],"k":{}}', b"x" * 128, b"y" * 129, b"z" * 700])
@pytest.mark.parametrize("tag", [b"", b"abc", b"t" * 24, b"long-" * 10])
def test_metadata_inline_or_in_the_arena_and_tags_of_any_length(meta: bytes, tag: bytes):
    values = [np.ones((3, 5), np.float64), np.array(7, np.int8), np.zeros((2, 1, 3), np.bool_)]
    py, c = _both(values, meta, tag=tag)
    assert py == c


@needs_c
@pytest.mark.parametrize("make", [
    lambda: np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],  # not contiguous
    lambda: np.arange(6, dtype=">f4"),  # big endian: the twin swaps it
    lambda: np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
])
def test_what_is_not_a_plain_copy_is_refused_and_the_twin_writes_it(make):
    py, c = _both([np.ones(3, np.float32), make()], b"", expect_c=False)
    assert py == c


@needs_c
@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=wire.MAX_NDIM), min_size=0,
                    max_size=wire.MAX_TENSORS),
    dtypes=st.lists(st.sampled_from(["<f4", "<f8", "|i1", "<u2", "|b1", "<i8", "<f2", "<c8"]),
                    min_size=wire.MAX_TENSORS, max_size=wire.MAX_TENSORS),
    meta_len=st.integers(0, 300),
    n=st.integers(0, 40),
    base=st.integers(0, 1024),
)
def test_any_call_writes_the_same_bytes(shapes, dtypes, meta_len, n, base):
    rng = np.random.default_rng(n)
    values = [np.asarray(rng.random(s) * 100).astype(d) for s, d in zip(shapes, dtypes)]
    assume(sum(v.nbytes + 8 for v in values) + base + meta_len + 64 <= ARENA)  # the call fits the arena
    py, c = _both(values, bytes(rng.integers(0, 256, meta_len, dtype=np.uint8)), n=n, base=base)
    assert py == c


@needs_c
def test_a_position_outside_the_segment_raises_and_writes_nothing():
    buf, arena, ring = _ring(0)
    x = np.ones(ARENA, np.uint8)  # one byte too many at base 1
    tensors = [to_wire(x, "argument 0")]
    before = bytes(buf), bytes(arena)
    with pytest.raises(ValueError):
        native.publish(ring.buf, ring.arena, ring.slot(0), HEAD, 0, 1, tensors, [0], b"", 0, 1, 0, ARENA, 0.0, 0.0, b"")
    with pytest.raises(ValueError):
        native.publish(ring.buf, ring.arena, len(buf) - 10, HEAD, 0, 0, [], [], b"", 0, 1, 0, 0, 0.0, 0.0, b"")
    assert (bytes(buf), bytes(arena)) == before


@needs_c
def test_the_layout_comes_from_wire_and_a_missing_position_is_refused():
    fields = publish.native_fields()
    assert fields["t0"] == wire.DESC_FIELDS["t0"][0] and fields["t_shape"] == wire.TENSOR_FIELDS["shape"][0]
    del fields["seq"]
    with pytest.raises(KeyError):
        native.configure(fields)
    native.configure(publish.native_fields())  # configured again as the link did
