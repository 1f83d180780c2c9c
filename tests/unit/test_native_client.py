"""The C publish of a call (`shmserve._native._client`) against its Python twin (`Ring.copy_in` +
`Ring.publish`): the same segment bytes, for every kind of call; refusals write nothing."""
from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shmserve import publish
from shmserve.publish import publisher
from shmserve.shm import wire
from shmserve.shm.channel import Ring
from shmserve.shm.signal import Signal
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


# -- publisher: the publish and the doorbell post of one link, C `submit` or its twin ----------------------
class CountingBell:
    """A doorbell with no semaphore behind it (as a test's link has): C posts it through ``post()``."""

    def __init__(self) -> None:
        self.posts = 0

    def post(self) -> None:
        self.posts += 1


def _submit(values: list[np.ndarray], meta: bytes, doorbell, n: int, post: bool = True, pure: bool = False):
    """Publish one call through `publisher` (its Python twin when `pure`); returns (bytes, submit, pos)."""
    tensors = [to_wire(v, f"argument {i}") for i, v in enumerate(values)]
    offsets, end = layout(tensors, 0)
    meta_off = (end + wire.META_ALIGN - 1) & ~(wire.META_ALIGN - 1)
    block_len = meta_off + len(meta) if len(meta) > wire.META_INLINE_MAX else end
    buf, arena, ring = _ring(n)
    saved = publish._NATIVE
    if pure:
        publish._NATIVE = None
    try:
        publish_one = publisher(ring, doorbell)
    finally:
        publish._NATIVE = saved
    submit, pos = publish_one(n, 77 + n, 3, 256, block_len, tensors, offsets, meta, meta_off, 9.5, b"tag", post)
    t0 = wire.DESC_FIELDS["t0"][0]
    assert struct.unpack_from("<d", buf, pos + t0)[0] == submit  # the submit time it returns is the one written
    struct.pack_into("<d", buf, pos + t0, 0.0)  # the only byte that may differ between two publishes
    return bytes(buf) + bytes(arena), submit, pos


@pytest.mark.parametrize("n", [0, 3, SLOTS, 2 * SLOTS + 1])
@pytest.mark.parametrize("meta", [b"", b"m" * 200])
def test_a_links_publisher_writes_what_its_twin_writes_and_posts_once(n: int, meta: bytes) -> None:
    values = [np.arange(768, dtype=np.float32), np.ones((2, 3), np.int64)]
    bell_c, bell_py = CountingBell(), CountingBell()
    before = time.monotonic()
    got_c, submit, pos_c = _submit(values, meta, bell_c, n)
    got_py, _, pos_py = _submit(values, meta, bell_py, n, pure=True)
    assert got_c == got_py
    assert pos_c == pos_py == FIRST + (n % SLOTS) * wire.DESC_SIZE  # the descriptor slot C computes, pinned
    assert before <= submit <= time.monotonic()  # time.monotonic's clock
    assert bell_c.posts == bell_py.posts == 1
    assert struct.unpack_from("<Q", got_c, HEAD)[0] == n + 1


def test_a_publisher_told_not_to_post_does_not() -> None:
    bell = CountingBell()
    _submit([np.ones(4, np.float32)], b"", bell, 1, post=False)
    assert bell.posts == 0


@needs_c
def test_a_call_c_refuses_is_published_and_posted_by_the_twin() -> None:
    odd = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]  # not contiguous
    bell_c, bell_py = CountingBell(), CountingBell()
    got_c, _, _ = _submit([odd], b"", bell_c, 2)
    got_py, _, _ = _submit([odd], b"", bell_py, 2, pure=True)
    assert got_c == got_py and bell_c.posts == bell_py.posts == 1


@needs_c
def test_the_c_post_lands_on_the_doorbell_semaphore_and_dropping_it_keeps_the_signal() -> None:
    sig = Signal.create()
    try:
        buf, arena, ring = _ring(0)
        publish_one = publisher(ring, sig)
        assert publish_one.args[5] is not None  # a C handle of its own on the semaphore
        tensors = [to_wire(np.ones(8, np.float32), "argument 0")]
        publish_one(0, 1, 0, 0, 32, tensors, [0], b"", 32, None, b"", True)
        publish_one(1, 2, 0, 64, 32, tensors, [0], b"", 32, None, b"", False)
        assert sig.value() == 1
        del publish_one  # closes the C handle: the Signal's own stays usable
        sig.post()
        assert sig.wait(0) and sig.wait(0) and not sig.wait(0)
    finally:
        sig.unlink()
        sig.close()


@needs_c
def test_a_doorbell_that_cannot_be_opened_has_no_c_handle() -> None:
    assert native.open_doorbell("/shmserve-test-no-such-semaphore") is None
    assert native.open_doorbell(None) is None


# -- Pending: the C twin of shmserve.link.Pending ------------------------------------------------------------
@needs_c
def test_the_c_pending_has_the_python_ones_attributes_set_the_same_way() -> None:
    from shmserve.link import Pending, new_pending

    assert new_pending is native.Pending
    sink: list = []
    made = [cls(7, "link", 4096, [0, 64, 0], "echo", 1.25, sink) for cls in (Pending, native.Pending)]
    for name in Pending.__slots__:
        values = [getattr(p, name) for p in made]
        assert values[0] == values[1] and type(values[0]) is type(values[1]), name
    assert made[1].sink is sink
    for p in made:
        p.done, p.lock, p.stream = True, "lock", None  # every attribute may be set, as a slot
        assert (p.done, p.lock) == (True, "lock")
    with pytest.raises(AttributeError):
        made[1].other = 1  # noqa: B018  (no attributes beyond the slots, as the class)
    with pytest.raises(TypeError):
        native.Pending(1, 2, 3)


@needs_c
def test_a_c_pending_in_a_cycle_is_collected() -> None:
    import gc
    import weakref

    class Link:
        pass

    link = Link()
    p = native.Pending(1, link, 0, None, "m", 0.0, None)
    link.pending = {1: p}  # type: ignore[attr-defined]
    gone = weakref.ref(link)
    del link, p
    gc.collect()
    assert gone() is None
