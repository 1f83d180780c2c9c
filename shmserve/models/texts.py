"""Lists of strings as tensors, so that a runner can join text calls into one batch.

The runner joins only tensors along the batch dim, and strings cross as JSON. A
list of ``n`` strings becomes two arrays with ``n`` rows: the UTF-8 bytes, zero
padded to a common width (a power of two, at least 16, so calls of similar
lengths have the same trailing shape and join), and each string's length in
bytes (so trailing NULs survive). Concurrent calls then join along dim 0 like any
tensor call, and the method unpacks the joined rows into one list.
"""
from __future__ import annotations

from typing import Any

import numpy as np

MIN_WIDTH = 16


def is_texts(value: Any) -> bool:
    """A non-empty list of strings: what `pack` takes."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def pack(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bytes ``(n, width)`` uint8, lengths ``(n,)`` int64) of `texts`."""
    encoded = [t.encode() for t in texts]
    longest = max(len(e) for e in encoded)
    width = max(MIN_WIDTH, 1 << max(longest - 1, 0).bit_length())
    rows = np.zeros((len(encoded), width), np.uint8)
    for i, e in enumerate(encoded):
        rows[i, :len(e)] = np.frombuffer(e, np.uint8)
    return rows, np.array([len(e) for e in encoded], np.int64)


def unpack(rows: Any, lengths: Any) -> list[str]:
    """The strings `pack` packed (rows and lengths may be joined from several calls)."""
    rows, lengths = np.asarray(rows), np.asarray(lengths)
    return [bytes(rows[i, :int(n)]).decode() for i, n in enumerate(lengths)]
