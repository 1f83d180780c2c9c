"""A call's result written by the runner worker straight into a registered client region.

`shmserve.shm.extra.OUTPUT_TO` names the destination bytes (what the v2 server sets for an output
that names a region); the worker writes the result there and the caller gets a view of its own
mapping, so nothing is copied on the way back. The arena is 1 MiB: a 4 MiB result can only come
back through the region. Run with and without SHMSERVE_PURE_PYTHON=1 (the worker's C row path).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import shmserve
from shmserve.oip.regions import RegionTable
from shmserve.shm.extra import OUT_MASK_OFF, OUTPUT_TO
from shmserve.shm.wire import U64
from tests.integration.test_region_in_place import Objects, echo, objects, worker_maps  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture
def table() -> Iterator[RegionTable]:
    t = RegionTable()
    yield t
    t.close()


def _region(table: RegionTable, objects: Objects, name: str, nbytes: int) -> tuple[str, np.ndarray]:  # noqa: F811
    key, _m = objects.make(nbytes)
    table.register(name, key, 0, nbytes)
    return key, np.frombuffer(table.view(name, 0, nbytes, "output"), np.uint8)


def _call(dest: np.ndarray | None, fn, *args):
    token = OUTPUT_TO.set(dest)
    try:
        return fn(*args)
    finally:
        OUTPUT_TO.reset(token)


def _masks(r: shmserve.Runner) -> list[int]:
    client = r._backend  # type: ignore[attr-defined]
    return [U64.unpack_from(link._buf, OUT_MASK_OFF)[0] for link in client.links if link.live]


def test_a_result_larger_than_the_arena_is_written_into_the_region(echo, objects, table) -> None:  # noqa: F811
    key, dest = _region(table, objects, "out", 4 * MB + 4096)
    got = _call(dest[4096:], echo.big.run, 4 * MB)  # at an offset into the region
    assert got.shape == (4 * MB,) and int(got.sum()) == 4 * MB
    assert np.shares_memory(got, dest) and got.ctypes.data == dest[4096:].ctypes.data  # a view: no copy
    assert int(dest[:4096].sum()) == 0  # nothing before the offset was touched
    assert key[1:] in worker_maps(echo)
    assert _masks(echo) == [0]  # the destination entry was freed with the response
    with pytest.raises(shmserve.errors.TensorTooLarge):  # the same result without a destination
        echo.big.run(4 * MB)
    del got


def test_a_small_result_of_a_call_served_alone_goes_into_the_region(echo, objects, table) -> None:  # noqa: F811
    """A result that would fit the arena too (the worker's one-call row path) still goes to the region."""
    _key, dest = _region(table, objects, "alone", 4096)
    for n in (1000, 3000):
        got = _call(dest, echo.big.run, n)
        assert got.shape == (n,) and np.shares_memory(got, dest) and int(dest[:n].sum()) == n
        del got
        dest[:] = 0
    assert _masks(echo) == [0]


def test_a_destination_too_small_leaves_the_result_in_the_arena(echo, objects, table) -> None:  # noqa: F811
    _key, dest = _region(table, objects, "small", 4096)
    got = _call(dest[:100], echo.big.run, 200)
    assert got.shape == (200,) and not np.shares_memory(got, dest) and int(dest.sum()) == 0
    with pytest.raises(shmserve.errors.TensorTooLarge):  # too big for both: the arena's error, as without
        _call(dest, echo.big.run, 4 * MB)
    assert _masks(echo) == [0]


def test_a_destination_outside_any_region_is_ignored(echo) -> None:  # noqa: F811
    got = _call(np.zeros(4096, np.uint8), echo.big.run, 100)
    assert got.shape == (100,) and _masks(echo) == [0]


def test_batched_rows_go_into_their_callers_regions(echo, objects, table) -> None:  # noqa: F811
    _key, dest = _region(table, objects, "rows", 64 * 4)
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    got = _call(dest, echo.predict.run, x)
    np.testing.assert_array_equal(got, x)
    assert np.shares_memory(got, dest)
    np.testing.assert_array_equal(np.frombuffer(dest, np.float32)[:16].reshape(4, 4), x)
    # later calls without a destination take the row path again and leave the region alone
    y = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(echo.predict.run(y), y)
    np.testing.assert_array_equal(np.frombuffer(dest, np.float32)[:16].reshape(4, 4), x)
    assert _masks(echo) == [0]
    del got


def test_an_unregistered_region_sends_the_result_through_the_arena(echo, objects, table) -> None:  # noqa: F811
    _key, dest = _region(table, objects, "gone", 4096)
    view = dest[:1024]
    table.unregister("gone")  # the caller's view keeps the mapping; the object is no longer registered
    got = _call(view, echo.big.run, 512)
    assert got.shape == (512,) and not np.shares_memory(got, view)
    del view, dest
