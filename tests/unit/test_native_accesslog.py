"""The access log's JSON lines in C (shmserve/_native/accesslog.c) against its Python twin.

Every test formats the same batch twice, once with the C twin and once with the
Python formatter alone, and asserts the text is the same character for
character: entries from hypothesis (any bytes in method and path, times across
seconds, floats and ints where floats go) and a list of odd ones. Entries the
C twin does not take (a field of another type, a client address outside
latin-1) make it answer None, and the batch is then formatted in Python.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmserve._native import load
from shmserve.http import access_log
from shmserve.http.access_log import FIELDS, _JsonLines

NATIVE = load("accesslog")
needs_native = pytest.mark.skipif(NATIVE is None, reason="shmserve._native._accesslog is not built "
                                  "(python setup.py build_ext --inplace) or SHMSERVE_PURE_PYTHON=1")
WALL = time.time() - time.monotonic()


def _python(items: list, wall: float) -> str:
    saved = access_log._native
    access_log._native = None
    try:
        return _JsonLines()(items, wall)
    finally:
        access_log._native = saved


def _outcome(fmt: Callable[[], str]) -> object:
    """What `fmt` returns, or the type of what it raises."""
    try:
        return fmt()
    except Exception as exc:
        return type(exc)


def _flat(entries: list[tuple]) -> list:
    return [field for entry in entries for field in entry]


def _entry(i: int = 0, **fields: object) -> tuple:
    base = {"ts": 1000.0 + i * 0.37, "client": "127.0.0.1:5", "method": b"POST", "path": b"/predict", "status": 200,
            "n_in": 3136, "n_out": 41, "seconds": 0.000412, "runner_s": 0.0002, "rid": b"a1b2c3d4e5f6-%x" % i}
    base.update(fields)
    return tuple(base.values())


@needs_native
def test_the_c_lines_are_the_python_lines() -> None:
    entries = [_entry(i) for i in range(50)]
    entries += [_entry(method=bytes([b]), path=b"/x" + bytes([b]) + b"y") for b in range(256)]
    entries += [_entry(seconds=s, runner_s=s) for s in (0.0, 0.0005, 0.0015, 1e-9, 12345.6789, 1e20, -0.001,
                                                         float("inf"), float("nan"), 0, 7)]
    # ties at the fourth decimal (m / 16 and m / 1024 ms are exact binaries): rounded to even, as Python does
    entries += [_entry(seconds=m / 16 / 1000, runner_s=m / 1024 / 1000) for m in range(400)]
    entries += [_entry(seconds=2.0 ** e, runner_s=2.0 ** -e) for e in range(-30, 45)]  # the fast path's edges
    entries += [_entry(ts=t) for t in (0.0, 0.999999, 1.0, 1699999990.25, 1.5e9 + 0.9999995)]
    entries += [_entry(status=s, n_in=n, n_out=2**62) for s, n in ((101, 0), (599, 10**15), (True, -3))]
    entries += [_entry(client="-", rid=b"-"), _entry(client="[::1]:8080"), _entry(client="h\xe9:1", path=b"")]
    items = _flat(entries)
    c = NATIVE.json_lines(items, WALL)
    assert c is not None
    assert c == _python(items, WALL)
    assert c.count("\n") == len(entries) and c.endswith("\n")
    for line, entry in zip(c.split("\n")[:306], entries[:306]):
        assert orjson.loads(line)["path"] == entry[3].decode("latin-1")  # valid JSON, the path's code points


@needs_native
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # examples: the loaded profile's
@given(st.lists(st.tuples(st.floats(0, 4e9), st.binary(max_size=12), st.binary(max_size=40), st.integers(0, 999),
                          st.integers(0, 2**40), st.floats(0, 1e4) | st.integers(0, 10**6), st.floats(0, 60)),
                min_size=1, max_size=20),
       st.floats(0, 2e9))
def test_any_entries_format_alike(rows: list[tuple], wall: float) -> None:
    entries = [_entry(ts=ts, method=m, path=p, status=s, n_in=n, seconds=sec, runner_s=r)
               for ts, m, p, s, n, sec, r in rows]
    items = _flat(entries)
    assert NATIVE.json_lines(items, wall) == _python(items, wall)


@needs_native
@pytest.mark.parametrize("odd", [
    {"client": "h\u20ac:1"},  # outside latin-1: the Python formatter writes it
    {"client": None}, {"method": "GET"}, {"path": bytearray(b"/")}, {"rid": "id"},
    {"status": 200.0}, {"n_in": 2**70}, {"seconds": "1"}, {"ts": 1e300}, {"ts": -5e9},
])
def test_an_entry_the_c_twin_does_not_take_leaves_the_batch_to_python(odd: dict) -> None:
    items = _flat([_entry(0), _entry(1, **odd)])
    assert NATIVE.json_lines(items, WALL) is None
    assert _outcome(lambda: _JsonLines()(items, WALL)) == _outcome(lambda: _python(items, WALL))


@needs_native
def test_a_list_that_is_not_whole_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="10-field"):
        NATIVE.json_lines(_flat([_entry()])[:-1], WALL)
    assert NATIVE.json_lines([], WALL) == ""
    assert FIELDS == 10


def test_the_python_lines_are_json_with_every_field() -> None:
    text = _python(_flat([_entry(0), _entry(1, path=b'/a"b\\c\x01\xe9')]), WALL)
    first, second = (orjson.loads(line) for line in text.split("\n")[:2])
    assert first["path"] == "/predict" and second["path"] == '/a"b\\c\x01\xe9'
    assert first["duration_ms"] == 0.412 and first["runner_ms"] == 0.2 and first["bytes_in"] == 3136
