"""IO descriptors: decoding request bodies and encoding results."""
from __future__ import annotations

import io
import struct

import numpy as np
import orjson
import pytest

from shmserve.errors import InvalidInput
from shmserve.io import JSON, NumpyNdarray, Text, UnsupportedMediaType, encode_npy, parse_npy

CT_JSON = {b"content-type": b"application/json"}
CT_NPY = {b"content-type": b"application/x-npy"}


def npy_bytes(arr: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def octet(dtype: str | None = None, shape: str | None = None) -> dict[bytes, bytes]:
    h = {b"content-type": b"application/octet-stream"}
    if dtype is not None:
        h[b"x-tensor-dtype"] = dtype.encode()
    if shape is not None:
        h[b"x-tensor-shape"] = shape.encode()
    return h


# -- JSON bodies -----------------------------------------------------------------
def test_json_array_decodes_to_the_descriptor_dtype() -> None:
    d = NumpyNdarray(dtype="float32", shape=(-1, 3), enforce_shape=True)
    arr = d.decode(b"[[1, 2.5, 3], [4, 5, 6]]", CT_JSON)
    assert arr.dtype == np.float32 and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, [[1, 2.5, 3], [4, 5, 6]])


def test_json_is_the_default_without_content_type_and_charset_is_ignored() -> None:
    d = NumpyNdarray()
    assert d.decode(b"[1, 2]", {}).tolist() == [1, 2]
    assert d.decode(b"[1, 2]", {b"content-type": b"application/json; charset=utf-8"}).tolist() == [1, 2]


@pytest.mark.parametrize("body, needle", [
    (b"[1, 2", "not valid JSON"),
    (b'{"a": 1}', "expected a JSON array"),
    (b'["a", "b"]', "array of numbers"),
    (b"[[1, 2], [3]]", "rectangular"),
    (b'["a", 1]', "array of numbers"),
])
def test_bad_json_bodies_are_invalid_input(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        NumpyNdarray(dtype="float32").decode(body, CT_JSON)


def test_enforce_shape_refuses_wrong_shapes_with_a_clear_message() -> None:
    d = NumpyNdarray(dtype="float32", shape=(-1, 4), enforce_shape=True)
    with pytest.raises(InvalidInput, match=r"expected shape \(\*, 4\), got \(1, 3\)"):
        d.decode(b"[[1, 2, 3]]", CT_JSON)
    with pytest.raises(InvalidInput, match="expected shape"):
        d.decode(b"[1, 2, 3, 4]", CT_JSON)


def test_without_enforce_shape_inputs_are_reshaped_when_sizes_agree() -> None:
    d = NumpyNdarray(dtype="float32", shape=(-1, 2))
    assert d.decode(b"[1, 2, 3, 4]", CT_JSON).shape == (2, 2)
    assert d.decode(b"[1, 2, 3]", CT_JSON).shape == (3,)  # cannot reshape: left alone


def test_enforce_dtype_refuses_floats_for_an_int_dtype_but_casting_mode_accepts() -> None:
    strict = NumpyNdarray(dtype="int32", enforce_dtype=True)
    assert strict.decode(b"[1, 2]", CT_JSON).dtype == np.int32
    with pytest.raises(InvalidInput, match="do not fit dtype int32"):
        strict.decode(b"[1.5, 2]", CT_JSON)
    assert NumpyNdarray(dtype="int32").decode(b"[1.5]", CT_JSON).tolist() == [1]


# -- raw octet-stream bodies -----------------------------------------------------
def test_octet_stream_with_dtype_and_shape_headers_is_a_zero_copy_view() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = x.tobytes()
    arr = NumpyNdarray().decode(body, octet("float32", "3,4"))
    np.testing.assert_array_equal(arr, x)
    assert not arr.flags.writeable  # a view of the request body, not a copy
    assert NumpyNdarray().decode(body, octet("<f4", "(3, 4)")).shape == (3, 4)


def test_octet_stream_falls_back_to_descriptor_dtype_and_shape() -> None:
    x = np.arange(8, dtype=np.float64).reshape(2, 4)
    arr = NumpyNdarray(dtype="float64", shape=(-1, 4)).decode(x.tobytes(), octet())
    np.testing.assert_array_equal(arr, x)
    assert NumpyNdarray(dtype="float64").decode(x.tobytes(), octet()).shape == (8,)


@pytest.mark.parametrize("headers, body, needle", [
    (octet(), b"\0" * 8, "X-Tensor-Dtype"),
    (octet("float32", "3"), b"\0" * 8, "needs 3 items"),
    (octet("float32"), b"\0" * 7, "whole number"),
    (octet("nonsense_dtype"), b"\0" * 8, "unknown dtype"),
    (octet("O"), b"\0" * 8, "object"),
    (octet("float32", "a,b"), b"\0" * 8, "comma-separated"),
    (octet("float32", "-2"), b"\0" * 8, "non-negative"),
])
def test_bad_octet_stream_requests(headers: dict[bytes, bytes], body: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        NumpyNdarray().decode(body, headers)


def test_enforce_dtype_refuses_other_binary_dtypes_and_casting_mode_converts() -> None:
    body = np.ones(4, np.float64).tobytes()
    with pytest.raises(InvalidInput, match="expected dtype float32, got float64"):
        NumpyNdarray(dtype="float32", enforce_dtype=True).decode(body, octet("float64"))
    arr = NumpyNdarray(dtype="float32").decode(body, octet("float64"))
    assert arr.dtype == np.float32 and arr.tolist() == [1, 1, 1, 1]


def test_repeated_raw_headers_decode_as_the_first_time_and_a_changed_body_is_checked_again() -> None:
    # The second request with the same headers takes the remembered plan: the same view, the same checks.
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    desc = NumpyNdarray(dtype="float32", shape=(-1, 4), enforce_shape=True)
    for _ in range(3):
        arr = desc.decode(x.tobytes(), octet("float32", "3,4"))
        np.testing.assert_array_equal(arr, x)
        assert arr.shape == (3, 4) and arr.dtype == np.float32 and not arr.flags.writeable
    with pytest.raises(InvalidInput, match="needs 12 items"):  # same headers, other length: not the plan's
        desc.decode(x.tobytes()[:-4], octet("float32", "3,4"))
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(InvalidInput, match="expected shape"):
            desc.decode(x.tobytes(), octet("float32", "12"))
    cast = NumpyNdarray(dtype="float32")  # a cast or a reshape is done again each time, not remembered
    for _ in range(2):
        out = cast.decode(np.ones(4, np.float64).tobytes(), octet("float64", "4"))
        assert out.dtype == np.float32 and out.tolist() == [1, 1, 1, 1]
    reshaped = NumpyNdarray(shape=(2, 2))
    for _ in range(2):
        assert reshaped.decode(np.ones(4, np.float32).tobytes(), octet("float32", "4")).shape == (2, 2)


def test_unknown_content_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="application/x-npy") as info:
        NumpyNdarray().decode(b"x", {b"content-type": b"image/png"})
    assert info.value.http_status == 415


# -- .npy bodies -----------------------------------------------------------------
@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.arange(5, dtype=">i8"),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.array(3.5),
    np.zeros((0, 4), np.uint8),
    np.array([True, False]),
])
def test_npy_bodies_round_trip(arr: np.ndarray) -> None:
    got = NumpyNdarray().decode(npy_bytes(arr), CT_NPY)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)


def test_npy_version_2_header() -> None:
    arr = np.arange(4, dtype=np.int16)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=(2, 0))
    np.testing.assert_array_equal(parse_npy(buf.getvalue()), arr)


def _npy_with_header(header: str, data: bytes = b"") -> bytes:
    h = header.encode("latin-1")
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


@pytest.mark.parametrize("blob, needle", [
    (npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), "object"),
    (npy_bytes(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])), "structured"),
    (_npy_with_header("{'descr': __import__('os').system('echo pwned'), 'fortran_order': False, 'shape': (1,), }"),
     "dictionary literal"),
    (_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", b"\0" * 4), "header says"),
    (_npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), "non-negative"),
    (_npy_with_header("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", b"\0" * 4), "True or False"),
    (_npy_with_header("{'descr': '<f4', 'shape': (1,), }", b"\0" * 4), "exactly the keys"),
    (b"PK\x03\x04 not an npy", "bad magic"),
    (b"\x93NUMPY\x01\x00\xff\xff", "header length"),
    (b"\x93NUMPY\x09\x00\x10\x00", "version 9"),
])
def test_malicious_or_broken_npy_is_refused(blob: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        NumpyNdarray().decode(blob, CT_NPY)


def test_npy_header_cache_serves_repeated_headers() -> None:
    cache: dict = {}
    blob = npy_bytes(np.ones((1, 784), np.float32))
    parse_npy(blob, cache)
    assert len(cache) == 1
    again = parse_npy(blob, cache)
    assert again.shape == (1, 784) and len(cache) == 1


# -- encoding --------------------------------------------------------------------
def test_json_is_the_default_response_and_written_straight_from_the_array() -> None:
    d = NumpyNdarray()
    x = np.array([[1.5, 2.0]], np.float32)
    ct, body, extra = d.encode(x, b"")
    assert ct == b"application/json" and orjson.loads(body) == [[1.5, 2.0]] and extra == b""
    ct, body, _ = d.encode(x[:, ::-1], b"*/*")  # non-contiguous still encodes
    assert orjson.loads(body) == [[2.0, 1.5]]
    _, body, _ = d.encode(np.arange(3, dtype=">i4"), b"")  # non-native byte order
    assert orjson.loads(body) == [0, 1, 2]


def test_npy_response_when_accepted() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ct, body, _ = NumpyNdarray().encode(x, b"application/x-npy")
    assert ct == b"application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), x)
    assert len(body) % 64 == x.nbytes % 64  # data starts on a 64-byte boundary


def test_octet_stream_response_carries_dtype_and_shape_headers() -> None:
    x = np.arange(4, dtype=np.int16).reshape(2, 2)
    ct, body, extra = NumpyNdarray().encode(x, b"application/octet-stream")
    assert ct == b"application/octet-stream" and body == x.tobytes()
    assert b"X-Tensor-Dtype: <i2\r\n" in extra and b"X-Tensor-Shape: 2,2\r\n" in extra


def test_encode_npy_matches_numpy_save() -> None:
    x = np.arange(10, dtype=np.float64)
    head, data = encode_npy(x)
    assert head + bytes(data) == npy_bytes(x)


def test_json_and_text_descriptors() -> None:
    j = JSON()
    assert j.decode(b'{"a": [1, 2]}', {}) == {"a": [1, 2]}
    assert j.decode(b"", {}) is None
    with pytest.raises(InvalidInput, match="not valid JSON"):
        j.decode(b"{", {})
    ct, body, _ = j.encode({"x": np.float32(1.5), "y": np.arange(2)}, b"")
    assert ct == b"application/json" and orjson.loads(body) == {"x": 1.5, "y": [0, 1]}

    t = Text()
    assert t.decode("héllo".encode(), {}) == "héllo"
    with pytest.raises(InvalidInput, match="UTF-8"):
        t.decode(b"\xff\xfe", {})
    assert t.encode("ok", b"") == (b"text/plain; charset=utf-8", b"ok", b"")


def test_descriptor_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="needs a dtype"):
        NumpyNdarray(enforce_dtype=True)
    with pytest.raises(ValueError, match="needs a shape"):
        NumpyNdarray(enforce_shape=True)
    with pytest.raises(InvalidInput, match="object"):
        NumpyNdarray(dtype=object)


def test_openapi_schema_of_a_shaped_array() -> None:
    schema = NumpyNdarray(dtype="float32", shape=(-1, 3)).openapi_schema()
    assert schema["type"] == "array" and "minItems" not in schema
    assert schema["items"]["minItems"] == 3 and schema["items"]["items"]["type"] == "number"
    body = NumpyNdarray().openapi_request_body()
    assert set(body["content"]) == {"application/json", "application/octet-stream", "application/x-npy"}
