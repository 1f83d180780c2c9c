"""JSON arrays of numbers to ndarrays, in memory a small multiple of the body and in short steps.

Parsing a whole JSON array with orjson builds one Python object per number (a
float is 24 bytes plus 8 for its list slot) and holds the GIL for the whole
parse: a 50 MB array once cost ~16x its size and blocked the event loop for a
second. Here the outer array is cut at its own commas (`shmserve.jsonscan`)
into pieces of about `PIECE_BYTES`; each piece is parsed with orjson and turned
into an ndarray at once, so only one piece's Python objects are alive at a
time, and the result is assembled a piece at a time into one array. An element
too large for one piece (``[[...10 million numbers...]]``) is cut the same way,
one level down. `array_steps` is that work in steps (see `shmserve.jsonscan`):
`decode_array` runs them at once, ``await run_async(array_steps(...))`` with
the event loop free between them.

Brackets and commas are structural because an array of numbers holds no
strings: a ``"`` anywhere is refused up front (that is also what keeps
``["nan"]`` from becoming a NaN). Each piece is orjson-parsed, so what is valid
JSON is orjson's call; pieces are promoted to one dtype as numpy promotes one
list (`numpy.result_type`).

Each piece (a small body is one piece) is first offered to the C accelerator
(`shmserve/_native/jsonarray.c`, through `native_array`), which parses the text
straight into an array of float64, float32 or the inferred dtype, with no
Python object per number. It takes a subset of what the path above accepts,
with the same values, and gives the rest back (None): that path then decides,
so results and error messages are the same with or without it
(``SHMSERVE_PURE_PYTHON=1`` runs the Python path alone).
"""
from __future__ import annotations

import itertools
import mmap
import struct
from typing import Any

import numpy as np
import orjson

from ._native import load
from .errors import InvalidInput
from .jsonscan import PIECE_BYTES, Steps, find_close, has_quote, run, skip_space, spans

__all__ = ["PIECE_BYTES", "array_steps", "decode_array", "fresh_array", "native_array", "span_steps", "to_array"]

_OPEN, _CLOSE = ord("["), ord("]")
#: nesting levels cut one level down before a span is left to orjson whole (which limits depth itself)
_MAX_LEVELS = 32
#: bytes of output copied per step when the pieces are assembled
_ASSEMBLE_BYTES = 1024 * 1024
_F64 = np.dtype(np.float64)
#: arrays from this size on are allocated by `fresh_array` in an mmap of 4 KiB pages (numpy's huge-page
#: advice starts at 4 MiB)
_FRESH_MMAP_BYTES = 4 * 1024 * 1024

#: the C parser (None: not built, or SHMSERVE_PURE_PYTHON=1); tests swap it for None to run the Python path
_native = load("jsonarray")
#: the requested dtypes it writes (None: inferred), and the dtypes its answers name
_NATIVE_CODES: dict[np.dtype | None, str] = {_F64: "d", np.dtype(np.float32): "f", None: "n"}
_NATIVE_DTYPES: dict[str, np.dtype] = {"d": _F64, "f": np.dtype(np.float32), "q": np.dtype(np.int64), "?": np.dtype(np.bool_)}


def decode_array(body: bytes, dtype: np.dtype | None, piece_bytes: int = PIECE_BYTES) -> np.ndarray:
    """The JSON array (or number) in `body` as an ndarray of `dtype` (inferred when None).

    Raises `InvalidInput` for invalid JSON, strings, objects, ``null`` and
    ragged arrays. Equal to ``np.asarray(orjson.loads(body), dtype)`` on what
    that accepts, for any `piece_bytes`; one difference when `dtype` is None:
    an integer beyond 64 bits is refused in a piece holding no float.
    """
    return run(array_steps(body, dtype, piece_bytes))


def array_steps(body: Any, dtype: np.dtype | None, piece_bytes: int = PIECE_BYTES,
                same_kind: np.dtype | None = None) -> Steps[np.ndarray]:
    """`decode_array` in steps of about one piece each.

    With `same_kind`, the numbers are read with their own dtype and must cast
    to `same_kind` under numpy's ``same_kind`` rule (no floats into an int
    dtype); the result then has dtype `same_kind`.
    """
    if len(body) <= piece_bytes:
        arr = native_array(body, dtype)
        if arr is not None:
            return _cast(arr, same_kind)
    start = skip_space(body, 0)
    if (yield from has_quote(body, 0, len(body))):
        if start < len(body) and body[start] == ord("{"):
            raise InvalidInput("expected a JSON array of numbers, got a JSON object")
        raise InvalidInput("expected a JSON array of numbers, got strings in it; send numbers only (NaN and "
                           "infinities cannot be written in JSON: send application/octet-stream or application/x-npy)")
    if len(body) <= piece_bytes or start >= len(body) or body[start] != _OPEN:
        return _cast(to_array(_loads(body), dtype), same_kind)
    end = yield from find_close(body, start, len(body), piece_bytes)
    if skip_space(body, end + 1) != len(body):
        raise InvalidInput("request body is not valid JSON (data after the array); send one JSON array of numbers")
    return (yield from span_steps(body, start, end, dtype, piece_bytes, same_kind))


def span_steps(body: Any, open_at: int, close_at: int, dtype: np.dtype | None, piece_bytes: int = PIECE_BYTES,
               same_kind: np.dtype | None = None, level: int = 0) -> Steps[np.ndarray]:
    """The array whose brackets are at `open_at` and `close_at` (a text holding no ``"``), piece by piece."""
    parts: list[np.ndarray] = []
    cuts = yield from spans(body, open_at, close_at, piece_bytes)
    for begin, end, close in cuts:
        first = skip_space(body, begin)
        if first >= end and len(cuts) > 1:
            raise InvalidInput("request body is not valid JSON (a missing array element); send a JSON array of numbers")
        if (end - begin > 2 * piece_bytes and body[first] == _OPEN and level < _MAX_LEVELS
                and close > first and body[close] == _CLOSE and skip_space(body, close + 1) >= end):
            # One element too large for a piece: cut it one level down.
            row = yield from span_steps(body, first, close, None if same_kind is not None else dtype,
                                        piece_bytes, None, level + 1)
            parts.append(row[np.newaxis])
            continue
        text = b"[" + body[begin:end] + b"]"
        want = None if same_kind is not None else dtype
        arr = native_array(text, want)
        parts.append(arr if arr is not None else to_array(_loads(text), want))
        yield
    return (yield from _assemble(parts, dtype, same_kind))


def _assemble(parts: list[Any], dtype: np.dtype | None, same_kind: np.dtype | None) -> Steps[np.ndarray]:
    """One array from the pieces' arrays, copied a MiB per step (a fresh 100 MB array faults in ~100 ms)."""
    if len(parts) == 1 and (same_kind is None or parts[0].nbytes <= _ASSEMBLE_BYTES):
        return _cast(parts[0], same_kind)
    tail = parts[0].shape[1:]  # (a single large part is cast a MiB per step below)
    if any(p.shape[1:] != tail for p in parts):
        raise InvalidInput("JSON body must be a rectangular array of numbers (rows of different lengths)")
    want = dtype if dtype is not None and same_kind is None else np.result_type(*parts)
    if same_kind is not None:
        _check_kind(want, same_kind)
        want = same_kind
    out = fresh_array((sum(len(p) for p in parts), *tail), want)
    row_bytes = max(1, out.itemsize * int(np.prod(tail, dtype=np.int64)))
    rows_per_step = max(1, _ASSEMBLE_BYTES // row_bytes)
    at = 0
    for k in range(len(parts)):
        p, parts[k] = parts[k], None  # freed as it is copied: freeing them all at the end took ~25 ms at once
        for i in range(0, len(p), rows_per_step):
            n = min(rows_per_step, len(p) - i)
            out[at:at + n] = p[i:i + n]
            at += n
            yield
        del p
    return out


def native_array(text: Any, dtype: np.dtype | None) -> np.ndarray | None:
    """The JSON array of numbers in `text` as `dtype` (inferred when None) by the C parser, or None where
    the Python path must decide (no parser, another dtype, or a text it does not take: see jsonarray.c)."""
    code = _NATIVE_CODES.get(dtype)
    if code is None or _native is None:
        return None
    got = _native.parse(text, code)
    if got is None:
        return None
    buf, shape, kind = got
    return np.frombuffer(buf, _NATIVE_DTYPES[kind]).reshape(shape)


def fresh_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)``, but a large one in memory faulted in a 4 KiB page at a time.

    numpy asks the kernel for transparent huge pages on large arrays; the first
    write to each 2 MiB page then zeroes (and, with THP defrag ``madvise``,
    compacts memory for) it in one go, several ms of kernel time in a single
    step of a decode written to be a millisecond. An anonymous mmap advised
    ``MADV_NOHUGEPAGE`` spreads that cost evenly over the steps; the array owns
    the mapping (unmapped when the array is freed).
    """
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes < _FRESH_MMAP_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    try:
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    except OSError:
        pass  # a kernel without THP: nothing to avoid
    return np.frombuffer(buf, dtype).reshape(shape)


def _check_kind(have: np.dtype, want: np.dtype) -> None:
    if not np.can_cast(have, want, casting="same_kind"):
        raise InvalidInput(f"JSON values of kind {have.name} do not fit dtype {want.name}; send integers")


def _cast(arr: np.ndarray, same_kind: np.dtype | None) -> np.ndarray:
    if same_kind is None:
        return arr
    _check_kind(arr.dtype, same_kind)
    return arr.astype(same_kind, copy=False)


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc}); send a JSON array of numbers") from None


def to_array(obj: Any, dtype: np.dtype | None, may_hold_strings: bool = False) -> np.ndarray:
    """`obj` (parsed JSON) as an ndarray of numbers; `InvalidInput` for anything else or out-of-range numbers.

    `may_hold_strings`: `obj` comes from a text that was not checked for ``"``;
    strings are then looked for first, since numpy would read ``"nan"`` or
    ``"1.5"`` as a number of an explicit float dtype.
    """
    if not isinstance(obj, (list, int, float)):
        raise InvalidInput(f"expected a JSON array of numbers, got a JSON {type(obj).__name__}")
    arr = _floats(obj, dtype) if dtype is not None and dtype.kind == "f" and type(obj) is list else None
    if arr is None:
        arr = _general(obj, dtype, may_hold_strings)
    if arr.dtype.kind not in "biufc":
        raise InvalidInput("JSON array must contain only numbers (or booleans), with equal-length rows")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        # JSON has no NaN or infinity: a non-finite value is a number too large for the dtype.
        raise InvalidInput(f"a JSON number is out of range for {arr.dtype.name}; send smaller values or use a wider dtype")
    return arr


def _floats(obj: list[Any], dtype: np.dtype) -> np.ndarray | None:
    """A list of numbers, or of equal-length lists of numbers, as a float `dtype` array; None for
    anything else (`_general` then decides). One ``struct.pack`` reads the numbers: numpy's own list
    conversion checks every item's type and the shape first, about 3x the time of this for the
    (1, 784) body of a typical request. The values are numpy's: each number becomes the nearest
    double (ints and booleans too), then `dtype`."""
    first = obj[0] if obj else None
    if type(first) is list:
        n = len(first)
        if len(obj) == 1:
            flat = first
        elif all(type(row) is list and len(row) == n for row in obj):
            flat = list(itertools.chain.from_iterable(obj))
        else:
            return None
        shape: tuple[int, ...] = (len(obj), n)
    else:
        flat, shape = obj, (len(obj),)
    if not flat:
        return None
    try:
        packed = struct.pack(f"<{len(flat)}d", *flat)
    except (struct.error, OverflowError, TypeError):  # not all numbers (a string, a list, null), or too large
        return None
    with np.errstate(over="ignore"):  # a double too large for `dtype` becomes inf: refused by the caller
        return np.frombuffer(packed, _F64).astype(dtype).reshape(shape)


def _general(obj: Any, dtype: np.dtype | None, may_hold_strings: bool) -> np.ndarray:
    if may_hold_strings and dtype is not None:
        try:
            kind = np.asarray(obj).dtype.kind
        except (ValueError, TypeError, OverflowError):
            kind = "f"  # ragged or too large: the conversion below says which
        if kind in "USO":
            raise InvalidInput("expected numbers, got strings (or objects) in the JSON array; send numbers only "
                               "(NaN and infinities cannot be written in JSON: send binary tensor data)")
    try:
        with np.errstate(over="ignore"):
            return np.asarray(obj, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"JSON body must be a rectangular array of numbers ({exc})") from None
