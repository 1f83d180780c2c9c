"""Where a large JSON text splits, found with numpy a chunk at a time; and decoding in steps.

A large JSON body is decoded in pieces (`shmserve.jsonarray` for arrays of
numbers, `shmserve.jsonvalue` for any value) so that its memory stays near the
result and the event loop never waits long: each piece is one orjson call on a
few hundred KiB. This module finds the cuts. A container (``[...]`` or
``{...}``) is cut at its own top-level commas; the brackets, braces, commas and
colons that count are the ones outside strings. String state is carried from
chunk to chunk: a ``"`` opens or closes a string unless an odd run of
backslashes precedes it. Every byte between two cuts is parsed by orjson, so
what is valid JSON stays orjson's call; this module only decides where to cut.

Decoding is written as generators (`Steps`): each ``yield`` ends a bounded
piece of work, about one chunk or one piece. `run` drives one to its result at
once; `run_async` lets the event loop run other work between steps, so the
longest stall is one step rather than the whole body (a worker thread would
not do: orjson holds the GIL for a whole call, and the loop thread then waits
for the interpreter's switch interval to get it back).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from contextlib import closing
from typing import Any, TypeVar

import numpy as np

from .errors import InvalidInput

__all__ = ["PIECE_BYTES", "Steps", "find_close", "find_colon", "has_quote", "run", "run_async", "skip_space",
           "spans"]

#: bytes of JSON text parsed in one orjson call: well under 1 ms of work, a few MB of Python objects
PIECE_BYTES = 128 * 1024

#: how long `run_async` works before it lets the event loop run (seconds)
STEP_BUDGET_S = 0.001

T = TypeVar("T")
#: a decoding in steps: ``yield`` between bounded pieces of work, ``return`` the result
Steps = Generator[None, None, T]

_OPEN_A, _CLOSE_A, _OPEN_O, _CLOSE_O = ord("["), ord("]"), ord("{"), ord("}")
_COMMA, _COLON, _QUOTE, _BACKSLASH = ord(","), ord(":"), ord('"'), ord("\\")
_SPACE = b" \t\r\n"
_CLOSER = {_OPEN_A: _CLOSE_A, _OPEN_O: _CLOSE_O}
#: bytes of text searched for a quote in one call of `has_quote`
_FIND_BYTES = 4 * 1024 * 1024


def run(steps: Steps[T]) -> T:
    """The result of `steps`, computed at once."""
    with closing(steps):
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


async def run_async(steps: Steps[T], budget_s: float | None = None) -> T:
    """The result of `steps`, letting the event loop run whenever `budget_s` (`STEP_BUDGET_S`) of work has passed."""
    if budget_s is None:
        budget_s = STEP_BUDGET_S
    clock = time.perf_counter
    until = clock() + budget_s
    # Closed however this ends: a cancelled request's decode gives back at once what it holds (the
    # collector's full collections, `shmserve.collector`) instead of whenever its frame is collected.
    with closing(steps):
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if clock() >= until:
                await asyncio.sleep(0)
                until = clock() + budget_s


def skip_space(body: Any, i: int) -> int:
    """The index of the first non-space byte at or after `i` (``len(body)`` when none)."""
    n = len(body)
    while i < n and body[i] in _SPACE:
        i += 1
    return i


def has_quote(body: Any, begin: int, end: int) -> Steps[bool]:
    """Whether ``body[begin:end]`` holds a ``"``, searched a few MiB per step."""
    for at in range(begin, end, _FIND_BYTES):
        if body.find(b'"', at, min(end, at + _FIND_BYTES)) >= 0:
            return True
        yield
    return False


class _Strings:
    """Whether the scan is inside a string, and how many backslashes ended the last chunk."""

    __slots__ = ("inside", "backslashes")

    def __init__(self) -> None:
        self.inside = False
        self.backslashes = 0


def _structural(body: Any, pos: int, n: int, strings: _Strings) -> tuple[np.ndarray, np.ndarray, bool]:
    """The structural bytes outside strings in ``body[pos:pos+n]``: offsets from `pos`, values, and `plain`.

    A plain chunk (no string in it or running through it) gets its brackets
    and braces only, found with one masked comparison (the bulk of a numeric
    body); its commas and colons are the caller's to find with ``bytes.find``.
    Any other chunk gets brackets, braces, commas and colons, strings masked.
    """
    a = np.frombuffer(body, np.uint8, count=n, offset=pos)
    if not strings.inside and body.find(b'"', pos, pos + n) < 0:
        strings.backslashes = 0  # outside strings a backslash escapes nothing (orjson refuses it)
        # Masking bits 0x26 maps [ ] { } (and Y _ y DEL, dropped below) to 0x59.
        at = np.flatnonzero((a & 0xD9) == 0x59)
        values = a[at]
        keep = (values & 0x06) != 0
        keep &= values < 0x7E
        keep &= values != 0x5F
        return at[keep], values[keep], True
    at = np.flatnonzero((a == _OPEN_A) | (a == _CLOSE_A) | (a == _COMMA) | (a == _OPEN_O) | (a == _CLOSE_O)
                        | (a == _COLON))
    quotes = np.flatnonzero(a == _QUOTE)
    if quotes.size:
        quotes = _unescaped(a, quotes, strings.backslashes)
    # A byte is outside strings when an even number of real quotes (plus the carried state) precede it.
    before = np.searchsorted(quotes, at) + strings.inside
    at = at[before % 2 == 0]
    strings.inside = bool((quotes.size + strings.inside) % 2)
    if a[-1] == _BACKSLASH:
        others = np.flatnonzero(a != _BACKSLASH)
        strings.backslashes = n - 1 - int(others[-1]) if others.size else n + strings.backslashes
    else:
        strings.backslashes = 0
    return at, a[at], False


def _unescaped(a: np.ndarray, quotes: np.ndarray, carried: int) -> np.ndarray:
    """The quotes not escaped: those after an even run of backslashes (`carried` ended the last chunk)."""
    prev = np.maximum(quotes - 1, 0)
    escaped = (a[prev] == _BACKSLASH) & (quotes > 0)
    if carried and quotes[0] == 0:
        escaped[0] = True
    if not escaped.any():
        return quotes
    last_other = np.maximum.accumulate(np.where(a != _BACKSLASH, np.arange(a.size), -1))
    run_len = np.where(quotes > 0, quotes - 1 - last_other[prev], 0)
    run_len += np.where((quotes == 0) | (last_other[prev] < 0), carried, 0)
    return quotes[run_len % 2 == 0]


def _depths(values: np.ndarray, depth: int) -> np.ndarray:
    """The nesting depth after each structural byte, starting from `depth`."""
    step = np.where((values == _OPEN_A) | (values == _OPEN_O), 1,
                    np.where((values == _CLOSE_A) | (values == _CLOSE_O), -1, 0))
    return depth + np.cumsum(step)


def find_close(body: Any, open_at: int, stop: int, piece_bytes: int = PIECE_BYTES) -> Steps[int]:
    """The index of the bracket or brace that closes the one at `open_at`, looking no further than `stop`."""
    strings = _Strings()
    depth = 0
    pos = open_at
    while pos < stop:
        n = min(piece_bytes, stop - pos)
        at, values, _ = _structural(body, pos, n, strings)
        if at.size:
            after = _depths(values, depth)
            closed = np.flatnonzero(after <= 0)
            if closed.size:
                close_at = pos + int(at[closed[0]])
                if body[close_at] != _CLOSER[body[open_at]]:
                    raise InvalidInput("request body is not valid JSON (a bracket closed by a brace, or the "
                                       "reverse); send valid JSON")
                return close_at
            depth = int(after[-1])
        pos += n
        yield
    raise InvalidInput("request body is not valid JSON (an array or object is not closed); send valid JSON")


def find_colon(body: Any, begin: int, stop: int, piece_bytes: int = PIECE_BYTES) -> Steps[int]:
    """The index of the first colon outside strings in ``body[begin:stop]`` (-1 when none)."""
    strings = _Strings()
    pos = begin
    while pos < stop:
        n = min(piece_bytes, stop - pos)
        at, values, plain = _structural(body, pos, n, strings)
        if plain:
            colon = body.find(b":", pos, pos + n)
            if colon >= 0:
                return colon  # type: ignore[no-any-return]
        else:
            colons = at[values == _COLON]
            if colons.size:
                return pos + int(colons[0])
        pos += n
        yield
    return -1


def spans(body: Any, open_at: int, close_at: int, piece_bytes: int = PIECE_BYTES) -> Steps[list[tuple[int, int, int]]]:
    """Spans ``(begin, end, close)`` between the brackets at `open_at` and `close_at`, cut at the container's own commas.

    Each span holds whole elements (or members) and is about `piece_bytes`
    long; one much longer than that holds a single element, which the caller
    may cut one level down. `close` is the index of the bracket that closes the
    span's one element when exactly one bracket in the span returns to the
    container's level (-1 otherwise), so the caller need not scan it again.
    Commas cut away are not in any span.
    """
    out: list[tuple[int, int, int]] = []
    strings = _Strings()
    begin = pos = open_at + 1
    depth = 1
    returns, last_return = 0, -1  # brackets back to depth 1 since `begin`, and the last of them
    while pos < close_at:
        n = min(piece_bytes, close_at - pos)
        at, values, plain = _structural(body, pos, n, strings)
        after = _depths(values, depth)
        if plain:
            first, last = _top_commas(body, pos, n, at, after, depth)
        else:
            top = pos + at[(values == _COMMA) & (after == 1)]
            first, last = (int(top[0]), int(top[-1])) if top.size else (-1, -1)
        if at.size or first >= 0:
            back = pos + at[(after == 1) & ((values == _CLOSE_A) | (values == _CLOSE_O))]
            if first >= 0:
                if first - begin > piece_bytes:  # a large element ends here: give it a span of its own
                    mine = back[back < first]
                    count = returns + mine.size
                    out.append((begin, first, (int(mine[-1]) if mine.size else last_return) if count == 1 else -1))
                    begin = first + 1
                if last >= begin:
                    out.append((begin, last, -1))
                    begin = last + 1
                back = back[back >= begin]
                returns, last_return = 0, -1
            returns += back.size
            if back.size:
                last_return = int(back[-1])
            if at.size:
                depth = int(after[-1])
        pos += n
        yield
    out.append((begin, close_at, last_return if returns == 1 else -1))
    return out


def _top_commas(body: Any, pos: int, n: int, at: np.ndarray, after: np.ndarray, depth: int) -> tuple[int, int]:
    """The first and last comma at depth 1 of a plain chunk (-1, -1 when none), searched between its brackets."""
    level = np.concatenate(([depth], after))  # the depth of each stretch between brackets
    level_one = np.flatnonzero(level == 1)
    if level_one.size > 64:  # many stretches (short rows): one vectorized pass beats a search per stretch
        commas = np.flatnonzero(np.frombuffer(body, np.uint8, count=n, offset=pos) == _COMMA)
        top = commas[level[np.searchsorted(at, commas)] == 1]
        return (pos + int(top[0]), pos + int(top[-1])) if top.size else (-1, -1)
    starts = np.concatenate(([pos], pos + at + 1))
    ends = np.concatenate((pos + at, [pos + n]))
    first = last = -1
    for k in level_one:
        first = body.find(b",", int(starts[k]), int(ends[k]))
        if first >= 0:
            break
    if first < 0:
        return -1, -1
    for k in level_one[::-1]:
        last = body.rfind(b",", int(starts[k]), int(ends[k]))
        if last >= 0:
            return first, last
    return first, first
