"""CPU tests of the CUDA IPC bookkeeping: descriptors, release table, import cache, dtype map."""
from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from shmserve.gpu.frameworks import DTYPES, NEEDS_VIEW, byte_extent, span_bytes
from shmserve.gpu.handles import (
    HANDLE_MARKER,
    DeviceHandle,
    ImportCache,
    PendingReleases,
    ReleaseTable,
    is_handle_dict,
)


def make_handle(**over):
    fields = dict(
        kind="torch", pid=4242, sender=4242, token=7, device=0, device_uuid=b"U" * 16,
        mem_handle=bytes(range(64)), alloc_size=1 << 20, offset=512, shape=(4, 8), strides=(8, 1),
        dtype="float32", event_handle=b"E" * 64,
    )
    fields.update(over)
    return DeviceHandle(**fields)


def test_handle_roundtrips_through_json():
    h = make_handle()
    d = orjson.loads(orjson.dumps(h.to_dict()))
    assert is_handle_dict(d) and d[HANDLE_MARKER] == 1
    back = DeviceHandle.from_dict(d)
    assert back == h
    assert back.cache_key == (4242, bytes(range(64)))


def test_handle_without_event_or_token_roundtrips():
    h = make_handle(event_handle=None, token=None)
    assert DeviceHandle.from_dict(h.to_dict()) == h


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(mem_handle=base64.b64encode(b"x" * 63).decode()), "base64 of 64 bytes"),
        (lambda d: d.update(mem_handle="not base64!"), "base64 of 64 bytes"),
        (lambda d: d.update(kind="jax"), "kind"),
        (lambda d: d.update(dtype="object"), "dtype"),
        (lambda d: d.update(offset=(1 << 20) - 64), "outside"),
        (lambda d: d.update(offset=-4), "outside"),
        (lambda d: d.update(shape=[4]), "shape"),
        (lambda d: d.update(pid=True), "integer"),
        (lambda d: d.pop("offset"), "lacks field 'offset'"),
        (lambda d: d.update({HANDLE_MARKER: 99}), "different shmserve versions"),
    ],
)
def test_bad_handles_are_rejected_with_the_field_named(mutate, message):
    d = make_handle().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        DeviceHandle.from_dict(d)


def test_non_handle_values_are_not_handles():
    assert not is_handle_dict({"a": 1})
    assert not is_handle_dict([HANDLE_MARKER])
    with pytest.raises(ValueError, match="marker"):
        DeviceHandle.from_dict({"kind": "torch"})


def test_byte_extent_matches_numpy_views():
    base = np.zeros((6, 10), dtype=np.float32)
    for view in (base, base.T, base[::2, 1:], base[::-1], base[:, ::-3], base[:0]):
        strides = tuple(s // 4 for s in view.strides)
        lo, hi = byte_extent(view.shape, strides, 4)
        if view.size == 0:
            assert (lo, hi) == (0, 0)
            continue
        first = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        touched = np.zeros(base.nbytes, dtype=bool)
        idx = np.indices(view.shape).reshape(view.ndim, -1).T
        for i in idx:
            off = first + sum(int(a) * s for a, s in zip(i, view.strides, strict=True))
            touched[off: off + 4] = True
        nz = np.flatnonzero(touched)
        assert (first + lo, first + hi) == (nz[0], nz[-1] + 1)
        assert span_bytes(view.shape, strides, 4) == hi - lo


def test_dtype_table_agrees_with_torch_and_numpy():
    torch = pytest.importorskip("torch")
    for name, (typestr, itemsize) in DTYPES.items():
        assert np.dtype(typestr).itemsize == itemsize, name
        if name not in NEEDS_VIEW:
            assert np.dtype(typestr) == np.dtype(name), name
        tdtype = getattr(torch, name, None)
        if tdtype is None:
            continue  # e.g. uint16/uint32 on old torch
        assert torch.empty(0, dtype=tdtype).element_size() == itemsize, name
        assert str(tdtype).removeprefix("torch.") == name


def test_release_table_keeps_objects_until_released_and_sweeps_dead_consumers():
    table = ReleaseTable(clock=lambda: 1.0)
    a = table.add(object(), b"h" * 64, 0x1000, 4096, 0, event=11, consumer_pid=100)
    b = table.add(object(), b"h" * 64, 0x1000, 4096, 0, event=12)
    c = table.add(object(), b"g" * 64, 0x9000, 4096, 0, event=13, consumer_pid=200, span=(0x9100, 0x9200))
    assert len({a.token, b.token, c.token}) == 3
    assert table.find_covering(b"g" * 64, 0x100, 0x200) is c
    assert table.find_covering(b"g" * 64, 0x100, 0x201) is None
    assert table.find_covering(b"g" * 64, 0xFF, 0x180) is None
    table.claim(b.token, 100)
    dead = table.sweep(lambda pid: pid != 100)
    assert sorted(e.token for e in dead) == sorted([a.token, b.token])
    assert table.tokens() == [c.token]
    assert table.release(c.token) is c
    assert table.release(c.token) is None  # idempotent
    assert len(table) == 0


class FakeMapper:
    """Counts opens and refuses a second open of an open handle, as CUDA does."""

    def __init__(self):
        self.open_now: dict[bytes, int] = {}
        self.opens = 0
        self.closed: list[int] = []

    def open(self, mem_handle, device):
        if mem_handle in self.open_now:
            raise RuntimeError("CUDA_ERROR_ALREADY_MAPPED")
        self.opens += 1
        self.open_now[mem_handle] = (1 << 24) * self.opens
        return self.open_now[mem_handle]

    def close(self, base, device):
        key = next(k for k, v in self.open_now.items() if v == base)
        del self.open_now[key]
        self.closed.append(base)


def test_import_cache_opens_each_allocation_once_and_trims_idle_lru():
    m = FakeMapper()
    cache = ImportCache(m.open, m.close, max_idle=2)
    hs = [make_handle(mem_handle=bytes([i]) * 64) for i in range(4)]
    first = cache.acquire(hs[0], 0)
    again = cache.acquire(hs[0], 0)
    assert first is again and first.refs == 2 and m.opens == 1
    other = cache.acquire(make_handle(pid=999, mem_handle=b"o" * 64), 0)
    assert other is not first and other.key == (999, b"o" * 64) and cache.opens == m.opens == 2
    cache.drop_ref(other)
    entries = [cache.acquire(h, 0) for h in hs[1:]]
    for e in entries:
        cache.drop_ref(e)
    # Idle: other, hs1, hs2, hs3 -> at most 2 idle stay mapped, the oldest go first.
    assert len(cache) == 3 and m.closed == [other.base, entries[0].base]
    assert cache.find(first.base + 10) is first
    assert cache.find(entries[2].base + 1) is entries[2]
    cache.drop_ref(first)
    cache.drop_ref(first)
    assert first.refs == 0
    closed = cache.drop_dead(lambda pid: False)
    assert closed == 2 and len(cache) == 0


def test_import_cache_never_closes_mappings_with_live_views():
    m = FakeMapper()
    cache = ImportCache(m.open, m.close, max_idle=0)
    live = cache.acquire(make_handle(mem_handle=b"a" * 64), 0)
    idle = cache.acquire(make_handle(mem_handle=b"b" * 64), 0)
    cache.drop_ref(idle)
    assert m.closed == [idle.base]
    assert cache.drop_dead(lambda pid: False) == 0  # live view keeps it mapped
    assert len(cache) == 1 and live.refs == 1


def test_pending_releases_wait_for_their_marker_in_order():
    done = set()
    discarded = []
    pending = PendingReleases(done=lambda m: m in done, discard=discarded.append)
    pending.add("t1", "m1")
    pending.add("t2", "m2")
    pending.add("t3", "m3")
    assert pending.ready() == []
    done.update({"m1", "m3"})
    assert pending.ready() == ["t1", "t3"]
    assert discarded == ["m1", "m3"] and len(pending) == 1
    done.add("m2")
    assert pending.ready() == ["t2"] and len(pending) == 0
