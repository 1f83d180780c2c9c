"""The C parser of JSON arrays of numbers (shmserve/_native/jsonarray.c) against its Python twin.

Every test runs `decode_array` twice, once with the C parser and once with the
Python path alone, and asserts the two agree: the same array (dtype, shape and
bits, so -0.0 and the last bit of every float count) or the same `InvalidInput`
message. Bodies come from hypothesis (nested numeric lists, rectangular arrays,
mutated valid bodies, arbitrary bytes) and from a list of hostile inputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shmserve import jsonarray
from shmserve._native import load
from shmserve.errors import InvalidInput

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NATIVE = load("jsonarray")
needs_native = pytest.mark.skipif(NATIVE is None, reason="shmserve._native._jsonarray is not built "
                                  "(python setup.py build_ext --inplace) or SHMSERVE_PURE_PYTHON=1")
DTYPES = [None, np.dtype("float32"), np.dtype("float64"), np.dtype("int64"), np.dtype("int32")]
#: piece sizes: one piece (the small-body path) and tiny pieces (the stepwise path, C per piece)
PIECES = [jsonarray.PIECE_BYTES, 16]


def _outcome(body: bytes, dtype: np.dtype | None, piece: int, native: object, same_kind: bool = False) -> object:
    saved = jsonarray._native
    jsonarray._native = native  # type: ignore[assignment]
    try:
        steps = jsonarray.array_steps(body, None if same_kind else dtype, piece, same_kind=dtype if same_kind else None)
        arr = jsonarray.run(steps)
    except InvalidInput as exc:
        return ("refused", str(exc))
    finally:
        jsonarray._native = saved
    return ("array", arr.dtype.str, arr.shape, arr.tobytes(), arr.flags.writeable)


def _agree(body: bytes, dtype: np.dtype | None, piece: int = jsonarray.PIECE_BYTES, same_kind: bool = False) -> object:
    with_c = _outcome(body, dtype, piece, NATIVE, same_kind)
    python = _outcome(body, dtype, piece, None, same_kind)
    assert with_c == python, (body[:200], dtype, piece)
    return with_c


numbers = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans())
nested = st.recursive(st.lists(numbers, max_size=6), lambda inner: st.lists(inner, max_size=4), max_leaves=60)
rectangular = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False},
)
_JSONISH = b"[]{},:.-+eE0123456789 \t\r\n\"truefalsnNI\x00\xff"


@needs_native
@given(value=nested, dtype=st.sampled_from(DTYPES), piece=st.sampled_from(PIECES))
def test_nested_lists_agree(value, dtype, piece):
    _agree(json.dumps(value).encode(), dtype, piece)


@needs_native
@given(arr=rectangular, dtype=st.sampled_from(DTYPES), piece=st.sampled_from(PIECES), same_kind=st.booleans())
def test_rectangular_arrays_agree(arr, dtype, piece, same_kind):
    _agree(orjson.dumps(arr.tolist()), dtype, piece, same_kind and dtype is not None)


@needs_native
@given(arr=rectangular, data=st.data(), dtype=st.sampled_from(DTYPES))
def test_mutated_bodies_agree(arr, data, dtype):
    body = bytearray(orjson.dumps(arr.tolist()))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        byte = data.draw(st.sampled_from(_JSONISH))
        edit = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        if edit == "insert" or at == len(body):
            body[at:at] = bytes([byte])
        elif edit == "replace":
            body[at] = byte
        else:
            del body[at]
    _agree(bytes(body), dtype, data.draw(st.sampled_from(PIECES)))


@needs_native
@given(body=st.binary(max_size=64), dtype=st.sampled_from(DTYPES))
def test_arbitrary_bytes_agree(body, dtype):
    _agree(body, dtype)


@needs_native
@given(text=st.from_regex(rb"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z"))
def test_numbers_are_correctly_rounded(text):
    """Each JSON number becomes the nearest double (Python's float() of it, an integer's float()), then float32."""
    for dtype in (np.dtype("float64"), np.dtype("float32")):
        got = _agree(b"[" + text + b"]", dtype)
        with np.errstate(over="ignore"):
            want = np.asarray([float(json.loads(text))], np.float64)
            fits = np.isfinite(want.astype(dtype)).all()
        if fits:
            assert got == ("array", dtype.str, (1,), want.astype(dtype).tobytes(), True)


HOSTILE = [
    b"", b" ", b"[", b"]", b"[]", b"[[]]", b"[[], []]", b"[[], [1]]", b"[[1], []]", b"[[[]], []]", b"[[], [[]]]",
    b"[1,]", b"[,1]", b"[1,,2]", b"[1 2]", b"[-]", b"[1e]", b"[1e+]", b"[1.]", b"[.5]", b"[01]", b"[-01]", b"[+1]",
    b"[0x10]", b"[1e400]", b"[-1e400]", b"[1e-400]", b"[1e99999999999999999999]", b"[4e38]", b"[3.4028235e38]",
    b"[-0]", b"[-0.0]", b"[0e0]", b"[NaN]", b"[Infinity]", b"[nan]", b'["nan"]', b'["1.5"]', b"[null]", b"[true]",
    b"[false, true]", b"[true, 1]", b"[1, true]", b"[1.5, false]", b"[tru]", b"[truex]", b'{"a": 1}', b"1", b"1.5",
    b"true", b"[1]x", b"[1] ", b" \t\r\n[ 1 ,\t2 ]\n", b"[1]\x00", b"[\x001]", b"[1\x00]", b"[1,\xc3\xa9]",
    b"\xef\xbb\xbf[1]", b"[\xa01]", b"[\x0c1]", b"[9223372036854775807]", b"[9223372036854775808]",
    b"[-9223372036854775808]", b"[-9223372036854775809]", b"[18446744073709551615]", b"[18446744073709551616]",
    b"[123456789012345678901234567890]", b"[9007199254740993]", b"[9007199254740993.0]", b"[16777217]",
    b"[[[16777217]]]", b"[[[9007199254740993]]]", b"[[1, 2], [3]]", b"[[1, 2], 3]", b"[1, [2, 3]]",
    b"[0." + b"0" * 400 + b"1]", b"[1" + b"0" * 400 + b"]", b"[1." + b"0" * 400 + b"1e-3]",
    b"[" * 31 + b"1" + b"]" * 31, b"[" * 32 + b"1" + b"]" * 32, b"[" * 33 + b"1" + b"]" * 33,
    b"[" * 2000 + b"]" * 2000, b"[" * 100000,
]


@needs_native
@pytest.mark.parametrize("piece", PIECES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("body", HOSTILE, ids=lambda b: repr(b[:24]))
def test_hostile_bodies_agree(body, dtype, piece):
    _agree(body, dtype, piece)


@needs_native
def test_the_c_parser_takes_the_common_bodies():
    """The C path is what runs for a typical request (the agreement tests alone would pass if it refused all)."""
    body = orjson.dumps(np.random.default_rng(0).standard_normal((2, 784)).astype(np.float32).tolist())
    for dtype, want in ((np.dtype("float32"), "<f4"), (None, "<f8"), (np.dtype("float64"), "<f8")):
        arr = jsonarray.native_array(body, dtype)
        assert arr is not None and arr.dtype.str == want and arr.shape == (2, 784) and arr.flags.writeable
    assert jsonarray.native_array(b"[[1, 2], [3, 4]]", None).dtype == np.int64
    assert jsonarray.native_array(b"[true, false]", None).dtype == np.bool_
    assert jsonarray.native_array(b"[1, 2]", np.dtype("int32")) is None  # other dtypes: the Python path
    assert jsonarray.native_array(b"[1, 2", None) is None


@needs_native
def test_bad_code_is_refused():
    with pytest.raises(ValueError):
        NATIVE.parse(b"[1]", "x")


def pow5_table() -> list[tuple[int, int]]:
    """(high, low) 64-bit halves of the 128 leading bits of 5**q for q = -342..308, as fast_float's generator
    script makes them (rounded up for negative q): the table of shmserve/_native/jsonarray_pow5.h."""
    out = []
    for q in range(-342, 0):
        power5 = 5 ** -q
        z = power5.bit_length()
        if q >= -27:
            c = 2 ** (z + 127) // power5 + 1
        else:
            c = 2 ** (2 * z + 2 * 64) // power5 + 1
            while c >= 1 << 128:
                c //= 2
        out.append(c)
    for q in range(0, 309):
        power5 = 5 ** q
        while power5 < 1 << 127:
            power5 *= 2
        while power5 >= 1 << 128:
            power5 //= 2
        out.append(power5)
    return [(c >> 64, c & (2**64 - 1)) for c in out]


def pow5_header() -> str:
    """The text of shmserve/_native/jsonarray_pow5.h (``python -m tests.unit.test_native_jsonarray`` writes it)."""
    rows = "".join(f"    {{0x{hi:016x}u, 0x{lo:016x}u}},\n" for hi, lo in pow5_table())
    return ("/* 128-bit leading bits of 5**q, q = -342..308, for the Eisel-Lemire float parse of jsonarray.c.\n"
            " * Generated by tests/unit/test_native_jsonarray.py (pow5_header), which checks this file against it. */\n"
            "static const uint64_t POW5_128[651][2] = {\n" + rows + "};\n")


POW5_HEADER = Path(__file__).resolve().parents[2] / "shmserve" / "_native" / "jsonarray_pow5.h"


def test_pow5_header_is_the_generated_table():
    assert POW5_HEADER.read_text() == pow5_header()


if __name__ == "__main__":
    POW5_HEADER.write_text(pow5_header())
