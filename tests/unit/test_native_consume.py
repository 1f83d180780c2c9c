"""The C read of a client's responses (`shmserve._native._client.consume`) against its Python twin
(`Ring.consume`): the same records and the same tail, for every kind of response."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmserve import publish
from shmserve.shm import wire
from shmserve.shm.channel import Ring
from shmserve.shm.wire import ResponseDesc, TensorMeta, block_layout, layout
from shmserve.tensors import to_wire

pure = os.environ.get("SHMSERVE_PURE_PYTHON", "") not in ("", "0")
native = None if pure else publish.load_consume(publish.load_native())
needs_c = pytest.mark.skipif(native is None, reason="shmserve._native._client is not built (or pure Python forced)")

SLOTS = 4
HEAD, TAIL = 64, 128  # the head and tail words' offsets in this test's buffer
FIRST = 4096
ARENA = 1 << 16


def _ring(seed: int) -> tuple[bytearray, bytearray, Ring[ResponseDesc]]:
    rng = np.random.default_rng(seed)
    buf = bytearray(rng.integers(0, 256, FIRST + SLOTS * wire.DESC_SIZE, dtype=np.uint8).tobytes())
    arena = bytearray(rng.integers(0, 256, ARENA, dtype=np.uint8).tobytes())
    return buf, arena, Ring(memoryview(buf), FIRST, SLOTS, HEAD, TAIL, memoryview(arena), ResponseDesc)


def _respond(ring: Ring[ResponseDesc], n: int, seq: int, status: int, values: list[np.ndarray], meta: bytes,
             base: int = 256) -> None:
    tensors = [to_wire(v, f"result {i}") for i, v in enumerate(values)]
    offsets, meta_off, nbytes = block_layout(tensors, len(meta), wire.RESULT_ALIGN)
    ring.copy_in(base, tensors, offsets, meta, meta_off)
    ring.publish(n, seq, status, base, nbytes + wire.BLOCK_HEADER, base + meta_off, (1.25, 2.5, 3.75, 5.0, 6.25),
                 n % 7 + 1, tensors, [base + o for o in offsets], meta)


def _twins(responses: list[tuple[int, list[np.ndarray], bytes]], tail: int = 0, seed: int = 1):
    rings = [_ring(seed), _ring(seed)]
    for _buf, _arena, ring in rings:
        for k, (status, values, meta) in enumerate(responses):
            _respond(ring, tail + k, 1000 + k, status, values, meta, base=256 + 4096 * (k % 8))
    (buf_p, arena_p, ring_p), (buf_c, arena_c, ring_c) = rings
    got_p = ring_p.consume(tail)
    assert native is not None
    got_c = native(ring_c.buf, ring_c.arena, ring_c.first, ring_c.slots, ring_c.head_word, ring_c.tail_word, tail)
    return got_p, got_c, bytes(buf_p) + bytes(arena_p), bytes(buf_c) + bytes(arena_c)


def _same(got_p, got_c) -> None:
    assert len(got_p) == len(got_c)
    for (pos_p, d_p, t_p, m_p), (pos_c, d_c, t_c, m_c) in zip(got_p, got_c, strict=True):
        assert pos_p == pos_c and m_p == m_c and type(m_c) is bytes
        assert type(d_c) is ResponseDesc and d_c == d_p and d_c.status == d_p.status and d_c.dequeue == 1.25
        assert [type(t) for t in t_c] == [TensorMeta] * len(t_p) and t_c == t_p
        for a, b in zip(t_p, t_c, strict=True):
            assert [type(v) for v in a] == [type(v) for v in b]  # ints, str, tuple: the same types as the twin's


@needs_c
def test_the_hot_result_one_float32_tensor_no_metadata():
    got_p, got_c, seg_p, seg_c = _twins([(wire.Status.OK, [np.ones(768, np.float32)], b"")])
    _same(got_p, got_c)
    assert got_c[0][2][0].shape == (768,) and got_c[0][2][0].dtype == "<f4"
    assert seg_p == seg_c and struct.unpack_from("<Q", seg_c, TAIL)[0] == 1  # the tail marks it consumed


@needs_c
@pytest.mark.parametrize("meta", [b"", b'{"s":{"v":1}}', b"x" * wire.META_INLINE_MAX, b"y" * 129, b"z" * 3000])
def test_metadata_inline_or_in_the_arena(meta: bytes):
    values = [np.ones((3, 5), np.float64), np.array(7, np.int8), np.zeros((2, 1, 3), np.bool_)]
    got_p, got_c, seg_p, seg_c = _twins([(wire.Status.OK, values, meta), (wire.Status.MODEL_ERROR, [], meta)])
    _same(got_p, got_c)
    assert got_c[0][3] == meta and seg_p == seg_c


@needs_c
@pytest.mark.parametrize("tail", [0, 3, 2**40 + 1])
def test_records_past_the_last_slot_wrap_to_the_first(tail: int):
    responses = [(wire.Status.OK, [np.full(k + 1, k, np.int32)], b"") for k in range(SLOTS)]
    got_p, got_c, seg_p, seg_c = _twins(responses, tail)
    _same(got_p, got_c)
    assert [d.seq for _p, d, _t, _m in got_c] == [1000, 1001, 1002, 1003]
    assert seg_p == seg_c and struct.unpack_from("<Q", seg_c, TAIL)[0] == tail + SLOTS


@needs_c
def test_nothing_new_reads_nothing_and_leaves_the_tail():
    buf, arena, ring = _ring(3)
    struct.pack_into("<Q", buf, HEAD, 9)
    before = bytes(buf)
    assert native(ring.buf, ring.arena, FIRST, SLOTS, HEAD, TAIL, 9) == [] == ring.consume(9)
    assert bytes(buf) == before


@needs_c
def test_malformed_counts_and_positions_raise():
    buf, arena, ring = _ring(4)
    _respond(ring, 0, 5, wire.Status.OK, [np.ones(4, np.float32)], b"")
    struct.pack_into("<I", buf, FIRST + wire.DESC_FIELDS["ntensors"][0], wire.MAX_TENSORS + 1)
    with pytest.raises(ValueError, match="tensors"):
        native(ring.buf, ring.arena, FIRST, SLOTS, HEAD, TAIL, 0)
    struct.pack_into("<I", buf, FIRST + wire.DESC_FIELDS["ntensors"][0], 1)
    buf[FIRST + wire.TENSORS_OFF + wire.TENSOR_FIELDS["ndim"][0]] = wire.MAX_NDIM + 1
    with pytest.raises(ValueError, match="dimensions"):
        native(ring.buf, ring.arena, FIRST, SLOTS, HEAD, TAIL, 0)
    with pytest.raises(ValueError, match="outside"):
        native(ring.buf, ring.arena, FIRST, SLOTS + 1000, HEAD, TAIL, 0)
    assert struct.unpack_from("<Q", buf, TAIL)[0] != 1  # nothing was marked consumed


@needs_c
def test_the_layout_comes_from_wire_and_an_unknown_field_code_is_refused():
    fixed, tensor, consts, record, tmeta = publish.consume_fields()
    assert [off for off, _code in fixed] == [wire.DESC_FIELDS[n][0] for n in wire.DESC_FORMAT_NAMES[:16]]
    assert "".join(code for _off, code in fixed) == wire.DESC_FIXED.format.lstrip("<")[:16]
    mod = publish.load_native()
    with pytest.raises(ValueError, match="code"):
        mod.configure_consume([(0, "h")] + fixed[1:], tensor, consts, record, tmeta)
    with pytest.raises(KeyError):
        mod.configure_consume(fixed, {k: v for k, v in tensor.items() if k != "shape"}, consts, record, tmeta)
    assert publish.load_consume(mod) is not None  # configured again with wire's layout


@needs_c
@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=4), min_size=0, max_size=wire.MAX_TENSORS),
       dtype=st.sampled_from(["<f4", "<i8", "|u1", "|b1", "<f2"]), meta_len=st.integers(0, 300),
       status=st.sampled_from(list(wire.Status)), tail=st.integers(0, 50))
def test_any_response_reads_the_same(shapes, dtype, meta_len, status, tail):
    values = [np.zeros(s, np.dtype(dtype)) for s in shapes]
    got_p, got_c, seg_p, seg_c = _twins([(status, values, b"m" * meta_len)], tail)
    _same(got_p, got_c)
    assert seg_p == seg_c


def test_a_links_consumer_reads_what_was_published():
    """Either path (the C one when built, the Python twin under SHMSERVE_PURE_PYTHON=1) the link uses."""
    buf, arena, ring = _ring(5)
    _respond(ring, 0, 41, wire.Status.OK, [np.arange(6, dtype=np.float32).reshape(2, 3)], b"")
    consume = publish.consumer(ring)
    [(pos, d, tensors, meta)] = consume(0)
    assert (pos, d.seq, d.status, meta) == (FIRST, 41, wire.Status.OK, b"")
    t = tensors[0]
    assert (t.dtype, t.shape, t.kind) == ("<f4", (2, 3), 0)
    got = np.ndarray(t.shape, np.float32, arena, t.offset)
    assert got.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert consume(1) == []
    assert (publish._CONSUME is None) == (pure or publish._NATIVE is None)
    assert layout([to_wire(got, "x")], 0) == ([0], 24)
