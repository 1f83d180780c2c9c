"""JSON arrays of numbers to ndarrays, in memory a small multiple of the body and in short steps.

Parsing a whole JSON array with orjson builds one Python object per number (a
float is 24 bytes plus 8 for its list slot) and holds the GIL for the whole
parse: a 50 MB array once cost ~16x its size and blocked the event loop for a
second. `decode_array` cuts the outer array at its own commas into pieces of
about `PIECE_BYTES`, parses each piece with orjson and turns it into an ndarray
at once, so only one piece's Python objects are alive at a time and the GIL is
free between pieces (run in a thread, it lets the event loop in every few ms).
An element too large for one piece (``[[...10 million numbers...]]``) is cut
the same way, one level down.

The cuts are found with numpy on the raw bytes. Brackets and commas are
structural because an array of numbers holds no strings: a ``"`` anywhere is
refused up front (that is also what keeps ``["nan"]`` from becoming a NaN).
Each piece is orjson-parsed, so what is valid JSON is orjson's call; pieces
are promoted to one dtype as numpy promotes one list (`numpy.result_type`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput

__all__ = ["PIECE_BYTES", "decode_array"]

#: bytes of JSON text parsed in one orjson call: ~1 ms of work, a few MB of Python objects
PIECE_BYTES = 256 * 1024

_OPEN, _CLOSE, _COMMA, _QUOTE = ord("["), ord("]"), ord(","), ord('"')
_SPACE = b" \t\r\n"


def decode_array(body: bytes, dtype: np.dtype | None, piece_bytes: int = PIECE_BYTES) -> np.ndarray:
    """The JSON array (or number) in `body` as an ndarray of `dtype` (inferred when None).

    Raises `InvalidInput` for invalid JSON, strings, objects, ``null`` and
    ragged arrays. Equal to ``np.asarray(orjson.loads(body), dtype)`` on what
    that accepts, for any `piece_bytes`; one difference when `dtype` is None:
    an integer beyond 64 bits is refused in a piece holding no float.
    """
    start = _skip_space(body, 0)
    if body.find(b'"') >= 0:
        if start < len(body) and body[start] == ord("{"):
            raise InvalidInput("expected a JSON array of numbers, got a JSON object")
        raise InvalidInput("expected a JSON array of numbers, got strings in it; send numbers only (NaN and "
                           "infinities cannot be written in JSON: send application/octet-stream or application/x-npy)")
    if len(body) <= piece_bytes or start >= len(body) or body[start] != _OPEN:
        return _to_array(_loads(body), dtype)
    end = _scan_close(body, start, piece_bytes)
    if _skip_space(body, end + 1) != len(body):
        raise InvalidInput("request body is not valid JSON (data after the array); send one JSON array of numbers")
    return _decode_span(body, start, end, dtype, piece_bytes)


def _decode_span(body: bytes, open_at: int, close_at: int, dtype: np.dtype | None, piece_bytes: int) -> np.ndarray:
    """The array whose brackets are at `open_at` and `close_at`, decoded piece by piece."""
    parts: list[np.ndarray] = []
    spans = _pieces(body, open_at, close_at, piece_bytes)
    for begin, end in spans:
        first = _skip_space(body, begin)
        if first >= end and len(spans) > 1:
            raise InvalidInput("request body is not valid JSON (a missing array element); send a JSON array of numbers")
        if end - begin > 4 * piece_bytes and first < end and body[first] == _OPEN and _single_element(body, first, end):
            # One element too large for a piece: cut it one level down.
            inner_close = _last_non_space(body, end)
            parts.append(_decode_span(body, first, inner_close, dtype, piece_bytes)[np.newaxis])
        else:
            parts.append(_to_array(_loads(b"[" + body[begin:end] + b"]"), dtype))
    if len(parts) == 1:
        return parts[0]
    tail = parts[0].shape[1:]
    if any(p.shape[1:] != tail for p in parts):
        raise InvalidInput("JSON body must be a rectangular array of numbers (rows of different lengths)")
    if dtype is None:
        want = np.result_type(*parts)
        parts = [p.astype(want, copy=False) for p in parts]
    return np.concatenate(parts, axis=0)


def _pieces(body: bytes, open_at: int, close_at: int, piece_bytes: int) -> list[tuple[int, int]]:
    """Spans of about `piece_bytes` between the brackets, each holding whole elements (cut at depth-1 commas)."""
    spans: list[tuple[int, int]] = []
    begin = pos = open_at + 1
    depth = 1
    while pos < close_at:
        n = min(piece_bytes, close_at - pos)
        a = np.frombuffer(body, np.uint8, count=n, offset=pos)
        brackets = np.flatnonzero((a == _OPEN) | (a == _CLOSE))
        depth_after = depth + np.cumsum(np.where(a[brackets] == _OPEN, 1, -1))
        commas = np.flatnonzero(a == _COMMA)
        if commas.size:
            before = np.searchsorted(brackets, commas) - 1
            depth_at = np.where(before >= 0, depth_after[np.maximum(before, 0)] if brackets.size else depth, depth)
            top = commas[depth_at == 1]
            if top.size:
                cut = pos + int(top[-1])
                spans.append((begin, cut))
                begin = cut + 1
        if brackets.size:
            depth = int(depth_after[-1])
        pos += n
    spans.append((begin, close_at))
    return spans


def _scan_close(body: bytes, open_at: int, piece_bytes: int, limit: int | None = None) -> int:
    """Index of the bracket that closes the one at `open_at` (looking no further than `limit`)."""
    depth = 0
    pos = open_at
    stop = len(body) if limit is None else limit
    while pos < stop:
        n = min(piece_bytes, stop - pos)
        a = np.frombuffer(body, np.uint8, count=n, offset=pos)
        brackets = np.flatnonzero((a == _OPEN) | (a == _CLOSE))
        if brackets.size:
            depth_after = depth + np.cumsum(np.where(a[brackets] == _OPEN, 1, -1))
            closed = np.flatnonzero(depth_after <= 0)
            if closed.size:
                return pos + int(brackets[closed[0]])
            depth = int(depth_after[-1])
        pos += n
    raise InvalidInput("request body is not valid JSON (the array is not closed); send a JSON array of numbers")


def _single_element(body: bytes, open_at: int, end: int) -> bool:
    """True when the span from `open_at` to `end` is one bracketed element (plus spaces)."""
    try:
        close = _scan_close(body, open_at, PIECE_BYTES, end)
    except InvalidInput:
        return False
    return _skip_space(body, close + 1) >= end


def _skip_space(body: bytes, i: int) -> int:
    n = len(body)
    while i < n and body[i] in _SPACE:
        i += 1
    return i


def _last_non_space(body: bytes, end: int) -> int:
    i = end - 1
    while i >= 0 and body[i] in _SPACE:
        i -= 1
    return i


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc}); send a JSON array of numbers") from None


def _to_array(obj: Any, dtype: np.dtype | None) -> np.ndarray:
    if not isinstance(obj, (list, int, float)):
        raise InvalidInput(f"expected a JSON array of numbers, got a JSON {type(obj).__name__}")
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(obj, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"JSON body must be a rectangular array of numbers ({exc})") from None
    if arr.dtype.kind not in "biufc":
        raise InvalidInput("JSON array must contain only numbers (or booleans), with equal-length rows")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        # JSON has no NaN or infinity: a non-finite value is a number too large for the dtype.
        raise InvalidInput(f"a JSON number is out of range for {arr.dtype.name}; send smaller values or use a wider dtype")
    return arr
