"""The ``.npy`` format, and the dtypes and shapes a tensor in an HTTP body may have.

Read with literals only (`ast.literal_eval` on the header): nothing from a
request is ever unpickled, and object or structured dtypes are refused.
"""
from __future__ import annotations

import ast
import struct
from typing import Any

import numpy as np

from .errors import InvalidInput
from .tensors import HTTP

__all__ = ["CACHE_LIMIT", "MAX_NDIM", "check_dtype", "check_shape", "parse_dtype", "parse_npy", "encode_npy"]

# What an HTTP body's tensor may be (bool, ints, floats, complex, fixed-size strings; at most 32 dims),
# and why that differs from the transport's limits: `shmserve.tensors`.
_ALLOWED_KINDS = HTTP.dtype_kinds
MAX_NDIM = HTTP.max_ndim
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own limit for reading untrusted headers
CACHE_LIMIT = 256  # most distinct headers a parser remembers
_MAX_BYTES = np.iinfo(np.intp).max  # numpy's own bound on an array's (nonzero-dimension) byte size


def check_dtype(dtype: np.dtype) -> np.dtype:
    """`dtype` if it may cross the wire, else `InvalidInput` saying what to use instead."""
    if dtype.kind not in _ALLOWED_KINDS:
        raise InvalidInput(
            f"dtype {dtype.str!r} cannot be sent: object and structured arrays are refused; "
            "use a numeric, bool or fixed-size string dtype"
        )
    if dtype.itemsize == 0:
        raise InvalidInput(f"dtype {dtype.str!r} has size 0; give a size, e.g. 'U8' or 'S16'")
    return dtype


def check_shape(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """`shape` if an array of it can exist, else `InvalidInput`.

    numpy refuses a shape whose nonzero dimensions multiply (times the item
    size) past the address space, even for an array of zero items such as
    ``(0, 2**62, 2**62)``: such shapes are a 400 here, not a ValueError later.
    """
    if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
        raise InvalidInput(f"shape {shape}: dimensions must be non-negative, at most {MAX_NDIM} of them")
    size = dtype.itemsize
    for d in shape:
        if d:
            size *= d
            if size > _MAX_BYTES:
                raise InvalidInput(f"shape {shape} of {dtype.str} is too large to exist; send the shape of your data")
    return shape


def parse_dtype(text: str) -> np.dtype:
    """The dtype a header names (``float32``, ``<f4``, ...), checked with `check_dtype`."""
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        raise InvalidInput(f"unknown dtype {text!r}; use a numpy dtype name such as 'float32' or '<f4'") from None
    return check_dtype(dtype)


def parse_npy(data: bytes | memoryview, cache: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] | None = None) -> np.ndarray:
    """Read a ``.npy`` file from memory without pickle; returns a read-only view of `data`.

    Raises `InvalidInput` for a malformed file, a structured or object dtype, or a
    byte count that does not match the header. `cache` (optional) memoizes parsed
    headers, since clients tend to send the same header over and over.
    """
    mv = memoryview(data)
    if len(mv) < 10 or bytes(mv[:6]) != _NPY_MAGIC:
        raise InvalidInput("body is not a .npy file (bad magic); save it with numpy.save or send application/json")
    major = mv[6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", mv, 8)
        start = 10
    elif major in (2, 3):
        if len(mv) < 12:
            raise InvalidInput(".npy header is truncated")
        (hlen,) = struct.unpack_from("<I", mv, 8)
        start = 12
    else:
        raise InvalidInput(f".npy format version {major} is not supported; use version 1, 2 or 3")
    if hlen > _NPY_MAX_HEADER or start + hlen > len(mv):
        raise InvalidInput(f".npy header length {hlen} is invalid or exceeds {_NPY_MAX_HEADER} bytes")
    header = bytes(mv[start:start + hlen])
    parsed = cache.get(header) if cache is not None else None
    if parsed is None:
        parsed = _parse_npy_header(header, major)
        if cache is not None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[header] = parsed
    dtype, shape, fortran, count = parsed
    offset = start + hlen
    nbytes = count * dtype.itemsize
    if len(mv) - offset != nbytes:
        raise InvalidInput(f".npy body holds {len(mv) - offset} data bytes but its header says {shape} of {dtype.str} ({nbytes} bytes)")
    arr = np.frombuffer(mv, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def _parse_npy_header(header: bytes, major: int) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    try:
        text = header.decode("utf-8" if major == 3 else "latin-1")
        # literal_eval builds literals only: no names, calls or attribute access can run.
        meta = ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise InvalidInput(".npy header is not a valid dictionary literal") from None
    if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
        raise InvalidInput(".npy header must have exactly the keys 'descr', 'fortran_order' and 'shape'")
    descr, fortran, shape = meta["descr"], meta["fortran_order"], meta["shape"]
    if not isinstance(descr, str):
        raise InvalidInput(".npy files with structured dtypes are refused; send a plain numeric array")
    if not isinstance(fortran, bool):
        raise InvalidInput(".npy header 'fortran_order' must be True or False")
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(".npy header 'shape' must be a tuple of non-negative integers")
    dtype = parse_dtype(descr)
    check_shape(shape, dtype)
    count = 1
    for d in shape:
        count *= d
    return dtype, shape, fortran, count


def encode_npy(arr: np.ndarray) -> tuple[bytes, Any]:
    """Return ``(header, data)`` of a version 1 ``.npy`` file holding `arr` (C order)."""
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    dtype = check_dtype(arr.dtype)
    shape = arr.shape
    shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    meta = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {shape_text}, }}"
    # Pad so that the data starts on a 64-byte boundary, as numpy does.
    pad = 63 - (10 + len(meta)) % 64
    head = meta + " " * pad + "\n"
    data = arr.reshape(-1).view(np.uint8) if arr.size else b""  # 1-d first: a 0-d array cannot change its itemsize
    return _NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(head)) + head.encode("latin-1"), data
