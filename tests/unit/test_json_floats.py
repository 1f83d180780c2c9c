"""The float fast path of `shmserve.jsonarray.to_array` gives what numpy's list conversion gives, and
leaves everything else to it (the same arrays, the same errors)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shmserve.errors import InvalidInput
from shmserve.jsonarray import _floats, to_array

F32, F64, F16 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)


@pytest.mark.parametrize("obj", [
    [[0.1, -2.5, 3.0, 1e-40, 123456789.123]],  # one row, as an HTTP body's (1, n)
    [[1.0, 2.0], [3.0, 4.0], [5.5, 6.25]],
    [0.1, 0.2, 0.3],
    [[1, 2, 3]],  # ints
    [[True, False, 1.5]],  # booleans
    [[2**53 + 1, 2**63 + 7, -(2**70)]],  # ints that round
    [[3.4028235e38, 3.4028236e38, 1e-46]],  # the edges of float32
])
@pytest.mark.parametrize("dtype", [F32, F64, F16])
def test_numbers_become_what_numpy_makes_of_them(obj: Any, dtype: np.dtype) -> None:
    fast = _floats(obj, dtype)
    assert fast is not None
    with np.errstate(over="ignore"):
        want = np.asarray(obj, dtype=dtype)
    assert fast.dtype == want.dtype and fast.shape == want.shape
    np.testing.assert_array_equal(fast, want)
    assert fast.flags.writeable


@pytest.mark.parametrize("obj", [
    [], [[]], [[1.0], [2.0, 3.0]], [[1.0], 2.0], [[[1.0]]], [[1.0, None]], [["1.5"]], [[1.0, [2.0]]],
    [[10**400]],
])
def test_anything_else_is_left_to_numpy(obj: Any) -> None:
    assert _floats(obj, F32) is None


def test_the_public_path_still_refuses_what_it_refused() -> None:
    with pytest.raises(InvalidInput, match="rectangular"):
        to_array([[1.0], [2.0, 3.0]], F32)
    with pytest.raises(InvalidInput, match="out of range"):
        to_array([[1e300]], F32)
    with pytest.raises(InvalidInput, match="too large"):
        to_array([[10**400]], F32)
    with pytest.raises(InvalidInput, match="strings"):
        to_array([["nan"]], F32, may_hold_strings=True)
    assert to_array([[1, 2]], F32).tolist() == [[1.0, 2.0]]
