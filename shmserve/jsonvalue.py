"""Any JSON value, parsed in steps: large arrays and objects a piece at a time.

One orjson call on a 50 MB body holds the event loop (and the GIL) for a
quarter of a second or more and builds its parse tree next to the result.
`value_steps` cuts each large container at its own commas (`shmserve.jsonscan`)
and parses the spans with orjson one at a time, extending the list or updating
the dict; a member or element too large for one piece is cut one level down.
The result equals ``orjson.loads(body)`` (an error there is an `InvalidInput`
here), for any piece size.

`number_paths` lets a caller take large arrays of numbers as `NumberSpan`s
instead of lists: the value at such a path (a tuple of object keys, None for
any array element), when it is an array longer than two pieces and holds no
string, is left unparsed, to be decoded straight into an ndarray of the dtype
the caller learns from elsewhere in the document
(`shmserve.jsonarray.span_steps`). The v2 codec reads each input's ``data``
(path ``("inputs", None, "data")``) so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .collector import PieceDecode
from .errors import InvalidInput
from .jsonscan import PIECE_BYTES, Steps, find_close, find_colon, has_quote, run, skip_space, spans

__all__ = ["NumberSpan", "loads", "value_steps"]

_OPEN_A, _OPEN_O = ord("["), ord("{")
_CLOSER = {_OPEN_A: ord("]"), _OPEN_O: ord("}")}
#: nesting levels cut one level down before a span is left to orjson whole (which limits depth itself)
_MAX_LEVELS = 32


@dataclass(frozen=True)
class NumberSpan:
    """A JSON array of numbers left unparsed: its brackets are at `open_at` and `close_at` of `body`."""

    body: Any
    open_at: int
    close_at: int


def loads(body: bytes, piece_bytes: int = PIECE_BYTES) -> Any:
    """``orjson.loads(body)``, piece by piece when `body` is large; `InvalidInput` when it is not JSON."""
    return run(value_steps(body, piece_bytes))


#: where a value sits: object keys, None for an array element
Path = tuple[str | None, ...]


def value_steps(body: Any, piece_bytes: int = PIECE_BYTES, number_paths: frozenset[Path] = frozenset()) -> Steps[Any]:
    """`loads` in steps of about one piece each; `number_paths`: see the module docstring."""
    start = skip_space(body, 0)
    if len(body) <= piece_bytes or start >= len(body) or body[start] not in (_OPEN_A, _OPEN_O):
        return _loads(body)
    close = yield from find_close(body, start, len(body), piece_bytes)
    if skip_space(body, close + 1) != len(body):
        raise InvalidInput("request body is not valid JSON (data after the value); send one JSON value")
    # The lists already parsed settle into the oldest generation after each piece, and full collections
    # wait until the decode ends (`shmserve.collector`): otherwise every young pass walks each number of
    # hundreds of fresh row lists, 5-15 ms at a time, and every full one all the rows parsed so far.
    with PieceDecode() as decode:
        return (yield from _container(body, start, close, _Options(piece_bytes, number_paths, decode), ()))


@dataclass(frozen=True)
class _Options:
    piece_bytes: int
    number_paths: frozenset[Path]
    decode: PieceDecode


def _container(body: Any, open_at: int, close_at: int, opts: _Options, path: Path) -> Steps[Any]:
    """The array or object between `open_at` and `close_at`, its spans parsed one at a time."""
    is_object = body[open_at] == _OPEN_O
    out: Any = {} if is_object else []
    cuts = yield from spans(body, open_at, close_at, opts.piece_bytes)
    for begin, end, close in cuts:
        first = skip_space(body, begin)
        if first >= end:
            if len(cuts) > 1:
                raise InvalidInput("request body is not valid JSON (a missing element or member); send valid JSON")
            continue
        if end - begin > 2 * opts.piece_bytes and len(path) < _MAX_LEVELS:
            if is_object:
                member = yield from _large_member(body, first, end, close, opts, path)
                if member is not None:
                    out[member[0]] = member[1]
                    continue
            else:
                value = yield from _large_value(body, first, end, close, opts, (*path, None))
                if value is not _NOT_ONE:
                    out.append(value)
                    continue
        text = body[begin:end]
        if is_object:
            out.update(_loads(b"{" + text + b"}"))
        else:
            out.extend(_loads(b"[" + text + b"]"))
        opts.decode.piece_done()
        yield
    return out


_NOT_ONE = object()  # the span is not one container: parse it whole


def _large_value(body: Any, first: int, end: int, close: int, opts: _Options, path: Path) -> Steps[Any]:
    """The one container from `first` to `close` (then spaces to `end`) cut one level down, or `_NOT_ONE`."""
    if close <= first or body[close] != _CLOSER.get(body[first]) or skip_space(body, close + 1) < end:
        return _NOT_ONE
    if path in opts.number_paths and body[first] == _OPEN_A and not (yield from has_quote(body, first, close)):
        return NumberSpan(body, first, close)
    return (yield from _container(body, first, close, opts, path))


def _large_member(body: Any, first: int, end: int, close: int, opts: _Options,
                  path: Path) -> Steps[tuple[str, Any] | None]:
    """The one ``"key": container`` member from `first` to `end`, its value cut one level down, or None."""
    colon = yield from find_colon(body, first, end, opts.piece_bytes)
    if colon < 0:
        return None
    key = _loads(body[first:colon])
    if not isinstance(key, str):
        raise InvalidInput("request body is not valid JSON (an object key that is not a string); send valid JSON")
    value_at = skip_space(body, colon + 1)
    if value_at >= end:
        return None
    value = yield from _large_value(body, value_at, end, close, opts, (*path, key))
    return None if value is _NOT_ONE else (key, value)


def _loads(text: Any) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON ({exc}); send valid JSON") from None
