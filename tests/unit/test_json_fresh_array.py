"""Large decoded JSON arrays live in memory faulted in 4 KiB pages (no transparent huge pages)."""
from __future__ import annotations

import mmap
import os

import numpy as np
import orjson
import pytest

from shmserve.jsonarray import decode_array, fresh_array

SMAPS = "/proc/self/smaps"


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping holding `address`."""
    inside = False
    with open(SMAPS) as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_small_fresh_array_is_a_plain_empty_array() -> None:
    a = fresh_array((10, 3), np.float32)
    assert a.shape == (10, 3) and a.dtype == np.float32 and a.flags.owndata


def test_a_large_fresh_array_is_writable_and_sized() -> None:
    a = fresh_array((3000, 784), "float32")
    assert a.shape == (3000, 784) and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous
    a[:] = 1.5
    assert float(a.sum()) == 1.5 * a.size


@pytest.mark.skipif(not os.path.exists(SMAPS) or not hasattr(mmap, "MADV_NOHUGEPAGE"), reason="Linux smaps and THP")
def test_a_large_decoded_array_is_in_memory_without_huge_pages() -> None:
    rows = np.random.default_rng(0).random((2000, 784)).round(4)
    body = orjson.dumps(rows.tolist())
    arr = decode_array(body, np.dtype("float32"))
    np.testing.assert_array_equal(arr, rows.astype(np.float32))
    assert "nh" in _vm_flags(arr.ctypes.data)  # MADV_NOHUGEPAGE: faulted in 4 KiB at a time, spread over the steps
