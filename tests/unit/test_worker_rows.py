"""`shmserve.worker.rows`: the C accelerator and its Python twin leave the same bytes and read the same calls.

Each test runs both paths on two copies of one segment and compares every byte, so a change to the
wire (`shmserve.shm.wire`) that one path follows and the other does not fails here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmserve.shm import wire
from shmserve.shm.channel import ChannelView
from shmserve.shm.wire import ChannelLayout, RequestDesc
from shmserve.worker import rows
from tests.unit.test_channel_invariants import channel

PATHS = [pytest.param(rows.consume_py, rows.publish_rows_py, id="python")]
if rows.NATIVE is not None:
    PATHS.append(pytest.param(rows.NATIVE.consume, rows.NATIVE.publish_rows, id="c"))
SLOTS, ARENA = 8, 1 << 16


class MemorySegment:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.size = size


def segment() -> tuple[bytearray, ChannelLayout]:
    lay = ChannelLayout(SLOTS, ARENA, ARENA)
    buf = bytearray(lay.total)
    lay.write_header(memoryview(buf))
    buf[lay.req_desc : lay.resp_arena] = b"\xa5" * (lay.resp_arena - lay.req_desc)  # stale bytes everywhere
    return buf, lay


def test_the_c_module_is_built_here() -> None:
    # The accelerator is optional for users, but this checkout builds it: a build that silently failed
    # would leave only the Python path tested.
    from shmserve._native import forced_pure

    assert rows.NATIVE is not None or forced_pure()


def test_the_c_module_refuses_a_layout_it_was_not_written_for() -> None:
    if rows.NATIVE is None:
        pytest.skip("C accelerator not built")
    desc, tens, block, consts, meta = rows.layout_args()
    narrow = dict(desc, seq=(0, 4))  # a u64 field made narrower
    with pytest.raises(ValueError, match="u64"):
        rows.NATIVE.configure(narrow, tens, block, consts, meta)
    missing = {k: v for k, v in desc.items() if k != "t3"}
    with pytest.raises(KeyError):
        rows.NATIVE.configure(missing, tens, block, consts, meta)
    # a refused layout leaves the one in use: publishing still writes wire's layout
    test_both_paths_publish_the_same_bytes.hypothesis.inner_test([2, 1], [3], "<f4", 5)  # type: ignore[attr-defined]


def publish_with(publish: Any, out: np.ndarray, items: list[int], head: int) -> tuple[bytearray, int]:
    buf, lay = segment()
    row = out.nbytes // len(out)
    entries, start, off = [], 0, 128
    for k, n in enumerate(items):
        nbytes = n * row
        length = wire.BLOCK_HEADER + nbytes + 8 * k  # blocks may be longer than their data
        entries.append((1000 + k, off, length, start * row, nbytes, n, 0.5 + k))
        off = (off + length + 63) // 64 * 64
        start += n
    new = publish(buf, lay.resp_desc, SLOTS, head, wire.H_RESP_HEAD, lay.resp_arena, out, 0, entries,
                  out.dtype.str.encode(), 0, tuple(out.shape[1:]), (1.0, 2.0, 3.0, 4.0), sum(items))
    return buf, new


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.integers(1, 5), min_size=1, max_size=SLOTS),
       trailing=st.lists(st.integers(0, 4), max_size=3),
       dtype=st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<f2", "<c8"]),
       head=st.integers(0, 3 * SLOTS))
def test_both_paths_publish_the_same_bytes(items: list[int], trailing: list[int], dtype: str, head: int) -> None:
    out = (np.arange(sum(items) * int(np.prod(trailing, dtype=np.int64))) % 7).astype(dtype)
    out = out.reshape((sum(items), *trailing))
    results = [publish_with(pub, out, items, head) for _cons, pub in (p.values for p in PATHS)]
    for buf, new in results:
        assert new == head + len(items)
        assert wire.U64.unpack_from(buf, wire.H_RESP_HEAD)[0] == new
    assert all(r[0] == results[0][0] for r in results[1:]), "the C and Python paths wrote different bytes"


@pytest.mark.parametrize(("consume", "publish"), PATHS)
def test_what_is_published_reads_back_as_each_calls_rows(consume: Any, publish: Any) -> None:
    out = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
    buf, new = publish_with(publish, out, [1, 2, 3], head=SLOTS - 1)  # wraps around the ring
    lay = ChannelLayout(SLOTS, ARENA, ARENA)
    view = ChannelView(MemorySegment(len(buf)), lay)  # type: ignore[arg-type]
    view.buf[:] = buf
    got = view.responses.consume(SLOTS - 1)
    assert [fixed.seq for _pos, fixed, _t, _m in got] == [1000, 1001, 1002]
    start = 0
    for (_pos, fixed, (t,), meta), n in zip(got, [1, 2, 3]):
        assert fixed.status == wire.Status.OK and meta == b"" and fixed.batch_size == 6
        assert (fixed.batch_start, fixed.model_start, fixed.model_end, fixed.written) == (1.0, 2.0, 3.0, 4.0)
        assert not wire.block_released(view.resp_arena, fixed.block_off)
        assert t.offset == fixed.block_off + wire.BLOCK_HEADER and t.shape == (n, 3) and t.dtype == "<f4"
        np.testing.assert_array_equal(np.ndarray(t.shape, np.float32, view.resp_arena, t.offset), out[start : start + n])
        start += n
    view.release()


@pytest.mark.parametrize(("consume", "publish"), PATHS)
def test_an_entry_outside_its_buffer_writes_nothing(consume: Any, publish: Any) -> None:
    if publish is rows.publish_rows_py:
        pytest.skip("the Python twin relies on its caller's blocks (the C path checks every entry first)")
    buf, lay = segment()
    before = bytes(buf)
    out = np.ones((2, 4), np.float32)
    entries = [(1, 0, 64, 0, 16, 1, 0.0), (2, ARENA - 8, 64, 16, 16, 1, 0.0)]
    with pytest.raises(ValueError):
        publish(buf, lay.resp_desc, SLOTS, 0, wire.H_RESP_HEAD, lay.resp_arena, out, 0, entries, b"<f4", 0, (4,),
                (0.0, 0.0, 0.0, 0.0), 2)
    assert bytes(buf) == before


def tensor(shape: tuple[int, ...], dtype: str) -> wire.Tensor:
    return (np.zeros(shape, dtype), 0, dtype)


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.tuples(st.integers(0, 300),  # metadata bytes: none, inline, in the arena
                                st.lists(st.tuples(st.lists(st.integers(0, 9), max_size=wire.MAX_NDIM),
                                                   st.sampled_from(["<f4", "|u1", "bf16", "<i8"]),
                                                   st.integers(0, 2)), max_size=wire.MAX_TENSORS),
                                st.floats(0, 1e9), st.floats(0, 1e9), st.sampled_from([0, 1, 2])),
                      max_size=SLOTS),
       tail=st.integers(0, 2 * SLOTS))
def test_both_paths_read_the_same_calls(calls: list[Any], tail: int) -> None:
    """And both say which calls their caller gave up on before they were read (cancel word seq + 1;
    0 and a stale word of the slot's previous call do not count)."""
    buf, lay = segment()
    view = ChannelView(MemorySegment(len(buf)), lay)  # type: ignore[arg-type]
    view.buf[:] = buf
    n = tail
    for k, (meta_len, specs, submit, deadline, cancel) in enumerate(calls):
        tensors = [(np.zeros(tuple(shape), "<f4"), kind, dt) for shape, dt, kind in specs]
        meta = bytes(range(256))[:meta_len] if meta_len < 256 else b"m" * meta_len
        view.requests.publish(n, 7 + k, k, 64 * k, 64, 512 * k, (submit, deadline, 0.0, 0.0, 0.0), 0, tensors,
                              [8 * i for i in range(len(tensors))], meta)
        if meta_len > wire.META_INLINE_MAX:
            view.req_arena[512 * k : 512 * k + meta_len] = meta
        pos = view.requests.slot(n)
        if cancel == 1:
            wire.mark_cancelled(view.buf, pos, 7 + k)
        elif cancel == 2:
            wire.mark_cancelled(view.buf, pos, 6 + k)  # the word another call of this slot left
        n += 1
    wire.U64.pack_into(view.buf, wire.H_REQ_HEAD, n)
    snapshot = bytes(view.buf)
    view.release()
    got = []
    for consume, _publish in (p.values for p in PATHS):
        mem = bytearray(snapshot)
        new_tail, read = consume(mem, lay.req_desc, SLOTS, tail, wire.H_REQ_HEAD, wire.H_REQ_TAIL, lay.req_arena,
                                 lay.req_arena_size)
        assert new_tail == n
        assert wire.U64.unpack_from(mem, wire.H_REQ_TAIL)[0] == (n if calls else 0)
        got.append(read)
        expected = []
        for pos, *_rest in read:
            fixed, tensors, meta = wire.unpack_desc(memoryview(mem), pos, memoryview(mem)[lay.req_arena:], RequestDesc)
            expected.append((pos, fixed.seq, fixed.method, meta, tensors, fixed.submit, fixed.deadline,
                             calls[fixed.seq - 7][4] == 1))
        assert read == expected
        assert all(type(r[7]) is bool for r in read)
        assert all(type(t) is wire.TensorMeta for r in read for t in r[4])
    assert all(g == got[0] for g in got[1:])


# -- the dispatch loop's use of them ----------------------------------------------------------------
def dispatcher_on_channels(tmp_path: Any, nch: int) -> tuple[Any, list[Any]]:
    from shmserve.runnable import MethodSignature
    from shmserve.worker.dispatch import Dispatcher
    from shmserve.worker_stats import WorkerStats

    class Model:
        def predict(self, x: np.ndarray) -> np.ndarray:
            return x * 2

    chans = [channel(slots=SLOTS, arena=ARENA) for _ in range(nch)]
    d = Dispatcher(Model(), [(MethodSignature("predict", batchable=True), 64, 5.0)],  # type: ignore[arg-type]
                   WorkerStats("r", 0, ["predict"], 0, path=tmp_path / "stats"))
    d.channels = list(chans)
    return d, chans


@pytest.fixture(params=[p.id for p in PATHS])
def path(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(rows, "NATIVE", None)
    return str(request.param)


@pytest.mark.parametrize("nch", [1, 2])
def test_a_batchs_results_each_get_their_own_block_and_rows(tmp_path: Any, path: str, nch: int) -> None:
    # A fresh arena reads all zeros: every block's state word says FREE until its header is written.
    # Reserving a batch's blocks must not reclaim one reserved a moment ago (two calls sharing a block).
    d, chans = dispatcher_on_channels(tmp_path, nch)
    calls = []
    for k in range(6):
        ch = chans[k % nch]
        x = np.full((1 + k % 3, 4), float(k), np.float32)
        n = ch.view.get(wire.H_REQ_HEAD)
        t = [(x, 0, "<f4")]
        off = 64 * k
        ch.view.requests.copy_in(off, t, [0], b"", 0)
        ch.view.requests.publish(n, 100 + k, 0, off, x.nbytes, 0, (0.0,) * 5, 0, t, [off], b"")
        calls.append((ch, 100 + k, x))
    d.intake()
    m = d.methods[0]
    for key, q in list(m.queues.items()):
        d._run(m, m.take(key, q, len(q)), batched=True)
    seen: dict[int, Any] = {}
    for ch in chans:
        for _pos, fixed, (t,), _meta in ch.view.responses.consume(0):
            assert fixed.status == wire.Status.OK
            seen[fixed.seq] = (ch, fixed.block_off, np.ndarray(t.shape, np.float32, ch.view.resp_arena, t.offset).copy())
    assert sorted(seen) == [c[1] for c in calls]
    for ch in chans:
        offs = [s[1] for s in seen.values() if s[0] is ch]
        assert len(set(offs)) == len(offs), f"calls share a result block: {offs}"
    for _ch, seq, x in calls:
        np.testing.assert_array_equal(seen[seq][2], x * 2)


# -- Request: the C twin of shmserve.worker.channel.Request ---------------------------------------------------
@pytest.mark.skipif(rows.NATIVE is None, reason="shmserve._native._worker is not built (or pure Python forced)")
@pytest.mark.parametrize("cancelled", [(), (True,)])
def test_the_c_request_has_the_python_ones_attributes_set_the_same_way(cancelled: tuple[bool, ...]) -> None:
    import gc
    import weakref

    from shmserve.worker.channel import Request, new_request

    assert new_request is rows.NATIVE.Request
    tensors = [wire.TensorMeta(0, 16, "<f4", (1, 4), 0, 0, 0)]
    made = [cls(5, "ch", 4096, 2, b"m", tensors, 1.5, 9.0, 2.0, *cancelled) for cls in (Request, new_request)]
    for name in Request.__slots__:
        values = [getattr(r, name) for r in made]
        assert values[0] == values[1] and type(values[0]) is type(values[1]), name
    for r in made:
        r.items = 3  # a joinable call's items are set after it is read
        assert r.items == 3
    with pytest.raises(AttributeError):
        made[1].other = 1
    with pytest.raises(TypeError):
        new_request(1, 2, 3)

    class Channel:
        pass

    ch = Channel()
    ch.queued = [new_request(1, ch, 0, 0, b"", [], 0.0, 0.0, 0.0)]  # type: ignore[attr-defined]
    gone = weakref.ref(ch)
    del ch
    gc.collect()
    assert gone() is None
