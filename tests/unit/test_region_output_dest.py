"""Output destinations (`shmserve.shm.extra`): the link's `OUT_DEST` entries and the worker's look-up."""
from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
import pytest

from shmserve.shm import extra, wire
from tests.unit.test_extra_segments import client_object


def test_the_out_dest_layout_is_pinned() -> None:
    assert extra.OUT_DEST_FIELDS == {"seq": (0, 8), "segment": (8, 1), "generation": (12, 4), "offset": (16, 8),
                                    "capacity": (24, 8)}
    assert extra.OUT_MASK_OFF == 2048 and extra.OUT_DEST_OFF == 2112 and extra.OUT_DEST_SLOTS == 32
    assert extra.OUT_DEST_OFF + extra.OUT_DEST_SLOTS * extra.OUT_DEST.size <= wire.HEADER_SIZE
    assert extra.OUT_MASK_OFF >= wire.EXTRA_OFF + wire.EXTRA_SLOTS * wire.EXTRA.size  # after the extra entries


@pytest.fixture
def registered() -> Iterator[tuple[str, mmap.mmap, int]]:
    with client_object(8192) as (name, m):
        gen = extra.EXTERNAL.add(m, name)
        yield name, m, gen
        extra.EXTERNAL.remove(gen)


def _place(slots, header, seq, dest):
    token = extra.OUTPUT_TO.set(dest)
    try:
        return extra.place_output(slots, header, seq)
    finally:
        extra.OUTPUT_TO.reset(token)


def test_a_destination_is_placed_found_written_and_released(registered) -> None:
    name, m, gen = registered
    header = memoryview(bytearray(wire.HEADER_SIZE))
    region = np.frombuffer(m, np.uint8)
    slots = _place(None, header, 41, region[1024:1024 + 64])
    slots = _place(slots, header, 42, region[4096:4096 + 400])
    assert extra.output_dest(header, 42) == (1, gen & 0xFFFFFFFF, 4096, 400)
    assert extra.output_dest(header, 41) == (1, gen & 0xFFFFFFFF, 1024, 64) and extra.output_dest(header, 7) is None
    maps = extra.ExtraMappings()
    result = np.arange(100, dtype=np.float32)
    dst = maps.output_view(header, extra.output_dest(header, 42), result, "<f4")
    dst[...] = result
    del dst
    np.testing.assert_array_equal(np.frombuffer(m, np.float32, 100, 4096), result)
    assert maps.output_view(header, extra.output_dest(header, 41), result, "<f4") is None  # 400 bytes > 64
    # the client's side: the response names entry 1 at offset 4096, viewed in this process's mapping
    t = wire.TensorMeta(4096, 400, "<f4", (100,), 0, 1, gen & 0xFFFFFFFF)
    (view,) = extra.results_in_place(slots, [t])
    assert view.ctypes.data == region[4096:].ctypes.data and float(view[99]) == 99.0
    del view
    slots.release_output(42)
    assert extra.output_dest(header, 42) is None and extra.output_dest(header, 41) is not None
    slots.release_output(41)
    assert wire.U64.unpack_from(header, extra.OUT_MASK_OFF)[0] == 0 and not slots.outs
    maps.close()


def test_bytes_outside_every_registered_object_place_nothing(registered) -> None:
    header = memoryview(bytearray(wire.HEADER_SIZE))
    slots = _place(None, header, 1, np.zeros(64, np.uint8))
    assert not slots.outs and extra.output_dest(header, 1) is None


def test_the_entries_run_out_then_calls_use_the_arena(registered) -> None:
    _name, m, _gen = registered
    header = memoryview(bytearray(wire.HEADER_SIZE))
    region = np.frombuffer(m, np.uint8)
    slots = None
    for seq in range(extra.OUT_DEST_SLOTS + 3):
        slots = _place(slots, header, seq, region[:16])
    assert len(slots.outs) == extra.OUT_DEST_SLOTS and extra.output_dest(header, extra.OUT_DEST_SLOTS) is None
    slots.release_output(5)
    slots = _place(slots, header, 99, region[:16])
    assert slots.outs[99] == 5 and extra.output_dest(header, 99) is not None


def test_a_stale_generation_is_refused_on_the_client(registered) -> None:
    _name, _m, gen = registered
    header = memoryview(bytearray(wire.HEADER_SIZE))
    slots = extra.LinkSlots(header)
    with pytest.raises(ValueError, match="unregistered"):
        extra.results_in_place(slots, [wire.TensorMeta(0, 4, "<f4", (1,), 0, 1, gen)])
