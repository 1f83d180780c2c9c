"""Property tests (hypothesis) of the request decoders: JSON arrays, any JSON value, ``.npy`` files, raw tensors.

Each decoder must either give the array a reference reading gives, or raise
`InvalidInput` (HTTP 400) — never another exception (a 500), whatever bytes
arrive. ``HYPOTHESIS_PROFILE=long`` runs many more examples (see the README).
"""
from __future__ import annotations

import os
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shmserve import jsonvalue
from shmserve.errors import InvalidInput
from shmserve.io import NumpyNdarray
from shmserve.jsonarray import decode_array
from shmserve.npy import encode_npy, parse_npy
from tests.fuzz.oracle import check_value_like_orjson

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = [None, np.dtype("float32"), np.dtype("float64"), np.dtype("int64"), np.dtype("bool")]


def _reference(body: bytes, dtype: np.dtype | None) -> np.ndarray | None:
    """What one orjson parse plus one np.asarray make of `body`; None where that is an error."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, (list, int, float)) or b'"' in body:
        return None
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(obj, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        return None  # overflowed the dtype: refused, since JSON cannot mean a non-finite number
    return arr if arr.dtype.kind in "biufc" else None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


numbers = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
nested = st.recursive(st.lists(numbers, max_size=6), lambda inner: st.lists(inner, max_size=4), max_leaves=60)
rectangular = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.int64, np.bool_]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    elements={"allow_nan": False, "allow_infinity": False},
)


@given(arr=rectangular, piece=st.integers(1, 64), dtype=st.sampled_from(DTYPES))
def test_json_arrays_decode_like_one_asarray_for_any_piece_size(arr: np.ndarray, piece: int, dtype) -> None:
    body = orjson.dumps(arr.tolist())
    want = _reference(body, dtype)
    if want is None:  # e.g. a float too large for int64: a 400 then
        with pytest.raises(InvalidInput):
            decode_array(body, dtype, piece)
        return
    assert _same(decode_array(body, dtype, piece), want)


@given(obj=nested, piece=st.integers(1, 48), dtype=st.sampled_from(DTYPES))
def test_any_nested_list_decodes_like_asarray_or_is_a_400(obj, piece: int, dtype) -> None:
    body = orjson.dumps(obj)
    want = _reference(body, dtype)
    try:
        got = decode_array(body, dtype, piece)
    except InvalidInput:
        assert want is None or (dtype is None and want.dtype.kind == "f")  # the documented >64-bit int case
        return
    assert want is not None and _same(got, want)


def _mutate(text: bytes, edits: list[tuple[int, int, str]]) -> bytes:
    """`text` with each ``(position, byte, how)`` edit applied in turn (insert, delete or replace)."""
    body = bytearray(text)
    for at, char, how in edits:
        i = at % (len(body) + 1)
        if how == "insert":
            body[i:i] = bytes([char])
        elif i < len(body):
            if how == "delete":
                del body[i]
            else:
                body[i] = char
    return bytes(body)


@given(base=rectangular, edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(list(b'[],0123456789.-e "tn ')),
                                                  st.sampled_from(["insert", "delete", "replace"])), max_size=4),
       piece=st.integers(1, 32))
def test_mutated_json_is_read_as_orjson_reads_it(base: np.ndarray, edits, piece: int) -> None:
    data = _mutate(orjson.dumps(base.tolist()), edits)
    want = _reference(data, None)
    try:
        got = decode_array(data, None, piece)
    except InvalidInput:
        assert want is None or want.dtype.kind == "f"
        return
    assert want is not None and _same(got, want), (data, got, want)


@pytest.mark.parametrize("text", [b'["nan"]', b'["inf"]', b'[1, "-inf"]', b'[["1"]]'])
def test_json_strings_are_never_numbers(text: bytes) -> None:
    with pytest.raises(InvalidInput, match="string"):
        NumpyNdarray(dtype="float32").decode(text, {b"content-type": b"application/json"})


def test_json_numbers_too_large_for_the_dtype_are_refused_not_made_infinite() -> None:
    with pytest.raises(InvalidInput, match="out of range for float32"):
        NumpyNdarray(dtype="float32").decode(b"[1e300]", {})
    assert NumpyNdarray(dtype="float64").decode(b"[1e300]", {})[0] == 1e300


# -- any JSON value, piece by piece ----------------------------------------------------------------
# Keys and strings full of the bytes that matter to the cutter: quotes, backslashes, brackets, commas, colons.
tricky_text = st.text(alphabet=st.sampled_from(list('"\\[]{},: ax\u00e9\n')), max_size=8)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(tricky_text, inner, max_size=5)),
    max_leaves=40,
)


@given(value=json_values, piece=st.integers(1, 40), pretty=st.booleans())
def test_any_json_value_parses_as_one_orjson_call_for_any_piece_size(value, piece: int, pretty: bool) -> None:
    body = orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0)
    assert jsonvalue.loads(body, piece) == value


@given(value=json_values, edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(list(b'[]{},:"\\ 0a')),
                                                   st.sampled_from(["insert", "delete", "replace"])), max_size=3),
       piece=st.integers(1, 24))
def test_mutated_json_values_are_read_as_orjson_reads_them(value, edits, piece: int) -> None:
    check_value_like_orjson(_mutate(orjson.dumps(value), edits), piece)


# -- .npy --------------------------------------------------------------------------------------
npy_arrays = hnp.arrays(
    dtype=st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.boolean_dtypes(),
                    hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
)


@given(arr=npy_arrays)
def test_npy_round_trips(arr: np.ndarray) -> None:
    head, data = encode_npy(arr)
    got = parse_npy(head + bytes(data))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.array_equal(got, arr, equal_nan=arr.dtype.kind in "fc")


def _npy(header: str, data: bytes = b"", version: int = 1) -> bytes:
    raw = header.encode("latin-1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(raw)) + raw + data


dims = st.one_of(st.integers(0, 8), st.integers(0, 2**70), st.integers(-5, -1), st.just(2**62))


@given(shape=st.lists(dims, max_size=5), descr=st.sampled_from(["<f4", "|u1", "<c8", "|b1", "<U2", "O", "V8", "<f16", "zz"]),
       fortran=st.sampled_from(["True", "False", "1", "None"]), data=st.binary(max_size=64))
def test_npy_headers_of_any_shape_decode_or_are_a_400(shape, descr: str, fortran: str, data: bytes) -> None:
    shape_text = "(" + "".join(f"{d}, " for d in shape) + ")"
    body = _npy(f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape_text}}}", data)
    try:
        arr = parse_npy(body)
    except InvalidInput:
        return
    assert arr.shape == tuple(shape) and arr.nbytes == len(data)


@given(body=st.binary(max_size=200))
def test_npy_garbage_is_a_400(body: bytes) -> None:
    for candidate in (body, b"\x93NUMPY\x01\x00" + body, b"\x93NUMPY\x03\x00" + body):
        try:
            parse_npy(candidate)
        except InvalidInput:
            pass


def test_npy_shapes_too_large_to_exist_are_a_400() -> None:
    with pytest.raises(InvalidInput, match="too large"):
        parse_npy(_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4611686018427387904)}"))


# -- raw tensors ---------------------------------------------------------------------------------
@given(dtype=st.one_of(st.sampled_from(["float32", "<f4", "u1", "c8", "S3", "U2", "O", "V4", "f16", "", "bogus", "i8,i8"]),
                       st.text(max_size=8)),
       shape=st.one_of(st.text(alphabet="0123456789,-() x", max_size=24),
                       st.lists(dims, max_size=4).map(lambda s: ",".join(map(str, s)))),
       body=st.binary(max_size=64),
       want=st.sampled_from([None, "float32", "int64"]))
def test_raw_tensors_decode_or_are_a_400(dtype: str, shape: str, body: bytes, want: str | None) -> None:
    desc = NumpyNdarray(dtype=want)
    headers = {b"content-type": b"application/octet-stream", b"x-tensor-dtype": dtype.encode("utf-8"),
               b"x-tensor-shape": shape.encode()}
    try:
        arr = desc.decode(body, headers)
    except InvalidInput:
        return
    assert isinstance(arr, np.ndarray)


def test_complex_input_is_not_silently_cast_to_real() -> None:
    body = np.array([1 + 2j], np.complex64).tobytes()
    headers = {b"content-type": b"application/octet-stream", b"x-tensor-dtype": b"complex64"}
    with pytest.raises(InvalidInput, match="complex"):
        NumpyNdarray(dtype="float32").decode(body, headers)
    assert NumpyNdarray(dtype="complex128").decode(body, headers).dtype == np.complex128


def test_byte_strings_are_not_cast_to_numbers() -> None:
    headers = {b"content-type": b"application/octet-stream", b"x-tensor-dtype": b"S3"}
    with pytest.raises(InvalidInput, match="string"):
        NumpyNdarray(dtype="float32").decode(b"nan", headers)
