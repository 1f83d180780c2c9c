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


# ---- the response hook: access_log.AccessLog.record in C (_native.Recorder) against its Python twin ----

def _conn(client: str | None = "127.0.0.1:9") -> object:
    from shmserve.http.protocol import HttpProtocol

    conn = object.__new__(HttpProtocol)
    conn.transport = None  # type: ignore[attr-defined]
    if client is not None:
        conn.access_client = client  # type: ignore[attr-defined]
    return conn


def _request(path: bytes = b"/p", ctx: object = None, **slots: object) -> object:
    from shmserve.http.protocol import Request

    r = Request(b"POST", path, {}, b"abc", True, t_begin=time.monotonic() - 0.002)
    r.request_id = b"rid-1"
    r.ctx = ctx
    for name, value in slots.items():
        setattr(r, name, value)
    return r


def _both(settings: object, calls: list[tuple], traced: bool = False) -> tuple[object, object]:
    """The same calls through the C hook and through the Python twin: (C log, Python log)."""
    from shmserve.http.access_log import AccessLog

    logs = []
    for native in (True, False):
        log = AccessLog(settings, [])  # type: ignore[arg-type]
        if traced:
            log.trace_into([])
        hook = log.record if native else log._record
        assert (type(hook).__name__ == "Recorder") == native
        for args in calls:
            hook(*args)
        logs.append(log)
    return logs[0], logs[1]


def _without_times(items: list) -> list:
    """Pending items with the clock's fields (end time, duration) left out: they differ by the clock only."""
    return [x for i, x in enumerate(items) if i % FIELDS not in (0, 7)]


@needs_native
def test_the_c_hook_queues_what_the_python_hook_queues() -> None:
    from shmserve.config.schema import AccessLogSettings
    from shmserve.http.observe import RequestContext

    ctx = RequestContext([("r", "m", {"submit": 1.0, "complete": 1.25}), ("r", "m", {"submit": 2.0})])
    odd_sink = [("r", "m", types_mapping({"submit": 1, "complete": 3}))]  # a sink the C loop leaves to Python
    calls = [(_conn(), _request(ctx=ctx), 200, 17),
             (_conn(None), _request(b"", ctx=None, method=b"", request_id=b""), 404, 0),
             (_conn(), _request(), 200, 5, [("r", "m", {"submit": 0.5, "complete": 1.0})]),
             (_conn(), _request(), 201, 5, odd_sink),
             (_conn(), _request(t_begin=0.0), 500, 1)]
    c, py = _both(AccessLogSettings(enabled=True, format="json"), calls)
    assert c.waiting == py.waiting == 5  # type: ignore[attr-defined]
    assert _without_times(c._pending) == _without_times(py._pending)  # type: ignore[attr-defined]
    assert [type(x) for x in c._pending] == [type(x) for x in py._pending]  # type: ignore[attr-defined]
    assert c._pending[1 * FIELDS + 1] == "-" and c._pending[2] == b"POST"  # type: ignore[attr-defined]
    durations = c._pending[7::FIELDS]  # type: ignore[attr-defined]
    assert 0.002 <= durations[0] < 5 and durations[4] >= 0  # t_begin 0: measured from t_parsed


def types_mapping(d: dict) -> object:
    from types import MappingProxyType

    return MappingProxyType(d)


@needs_native
def test_the_c_hook_samples_as_the_python_hook_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from shmserve.config.schema import AccessLogSettings

    draws = iter([0.9, 0.1] * 2)
    monkeypatch.setattr(access_log, "_random", lambda: next(draws))
    sampled = AccessLogSettings(enabled=True, format="json", sample_rate=0.5, slow_ms=60_000)
    calls = [(_conn(), _request(), 200, 1), (_conn(), _request(), 200, 2), (_conn(), _request(), 503, 3),
             (_conn(), _request(t_begin=time.monotonic() - 120), 200, 4)]
    c, py = _both(sampled, calls)
    # 0.9 >= 0.5: dropped; 0.1: kept; a 5xx and a slow request: kept without a draw
    assert c._pending[6::FIELDS] == py._pending[6::FIELDS] == [2, 3, 4]  # type: ignore[attr-defined]


@needs_native
def test_the_c_hook_queues_traced_requests_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from shmserve.config.schema import AccessLogSettings
    from shmserve.http.observe import RequestContext

    traced_ctx = RequestContext()
    traced_ctx.parent = "parent"
    broken = _request(ctx=None, t_parsed=None, t_begin=0.0)  # cannot be measured
    calls = [(_conn(), _request(ctx=traced_ctx), 200, 1), (_conn(), _request(ctx=RequestContext()), 200, 2),
             (_conn(), broken, 200, 3)]
    with caplog.at_level(logging.ERROR, "shmserve.http"):
        c, py = _both(AccessLogSettings(enabled=True, format="json"), calls, traced=True)
    assert caplog.text.count("recording the access line or spans of request rid-1 failed") == 2  # once per twin
    assert caplog.records[0].exc_info is not None  # with its traceback
    for log in (c, py):
        assert log.waiting == 2  # type: ignore[attr-defined]
        (ctx, method, path, status, rid, end), = log._traced  # type: ignore[attr-defined]
        assert ctx is traced_ctx and (method, path, status, rid) == (b"POST", b"/p", 200, b"rid-1")
        assert abs(end - time.monotonic()) < 5


@needs_native
def test_the_c_hook_takes_four_or_five_arguments() -> None:
    from shmserve.config.schema import AccessLogSettings
    from shmserve.http.access_log import AccessLog

    log = AccessLog(AccessLogSettings(enabled=True), [])
    with pytest.raises(TypeError, match="4 or 5"):
        log.record(_conn(), _request())
    with pytest.raises(TypeError):
        NATIVE.Recorder(None, (), 1.0, 0.0, None, None, None, None)  # type: ignore[union-attr]


@needs_native
def test_the_c_hook_reads_any_request_object_and_configure_wants_slots() -> None:
    import types

    from shmserve.config.schema import AccessLogSettings

    def plain() -> object:  # not a Request: its fields are looked up as attributes
        return types.SimpleNamespace(method=b"GET", path=b"/n", headers={}, body=b"12345", t_begin=time.monotonic(),
                                     t_parsed=time.monotonic(), request_id=b"ns-1", ctx=None)

    c, py = _both(AccessLogSettings(enabled=True, format="json"), [(_conn(), plain(), 200, 3), (_conn(), _request(), 200, 4)])
    assert _without_times(c._pending) == _without_times(py._pending)  # type: ignore[attr-defined]
    assert c._pending[5] == 5 and c._pending[9] == b"ns-1"  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="no __dict__"):
        NATIVE.configure(types.SimpleNamespace)  # type: ignore[union-attr]

    class Slotted:
        __slots__ = ("method",)

    with pytest.raises(AttributeError):
        NATIVE.configure(Slotted)  # type: ignore[union-attr]  # the other fields are missing


@needs_native
@pytest.mark.parametrize("seconds", [0.0, 5e-324, 2.2250738585072014e-308, 1e-12, 4.99e-7, 5e-7, 1.5e-6, 2.5e-6,
                                     0.0010005, 0.123456789, 1.0, 1234.5675, 9e9, 9.007199254740992e9, 1e300])
def test_milliseconds_round_as_python_formats_them(seconds: float) -> None:
    """put_ms reads the double's bits for its exact rounding (ties to even); subnormals, values too small
    for its shift and huge ones take PyOS_double_to_string: the same text as '%.3f' either way."""
    items = _flat([_entry(seconds=seconds, runner_s=seconds / 3)])
    assert NATIVE.json_lines(items, WALL) == _python(items, WALL)  # type: ignore[union-attr]
