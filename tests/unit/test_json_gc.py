"""A large JSON() body decoded in steps keeps the collector's generations small, and leaves gc as it was."""
from __future__ import annotations

import gc

import orjson
import pytest

from shmserve import jsonvalue
from shmserve.errors import InvalidInput
from shmserve.jsonvalue import value_steps

ROWS = [[i + 0.5] * 200 for i in range(1500)]  # ~1.8 MB of JSON, 1500 row lists
BODY = orjson.dumps(ROWS)


def _young_sizes(steps) -> tuple[list[int], object]:
    sizes = []
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return sizes, done.value
        if gc.get_freeze_count():  # once the container's pieces are being parsed (after finding its end)
            sizes.append(len(gc.get_objects(0)) + len(gc.get_objects(1)))


@pytest.fixture(autouse=True)
def _gc_enabled():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_rows_already_parsed_leave_the_young_generations() -> None:
    sizes, value = _young_sizes(value_steps(BODY, piece_bytes=32 * 1024))
    assert value == ROWS and len(sizes) > 40
    # Each step's rows are frozen after it: what a young pass would walk stays about one piece's rows
    # (~20 here), not the thousands parsed so far.
    assert max(sizes) < 600, max(sizes)
    assert gc.get_freeze_count() == 0  # given back at the end


def test_a_failed_or_abandoned_decode_gives_the_frozen_objects_back() -> None:
    with pytest.raises(InvalidInput):
        _young_sizes(value_steps(BODY[:-1] + b",]", piece_bytes=32 * 1024))
    assert gc.get_freeze_count() == 0
    steps = value_steps(BODY, piece_bytes=32 * 1024)
    for _ in range(10_000):
        next(steps)
        if gc.get_freeze_count():
            break
    assert gc.get_freeze_count() > 0
    steps.close()  # a client that went away: the task stops iterating
    assert gc.get_freeze_count() == 0


def test_objects_someone_else_froze_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Watched through the calls the decoder makes, not through gc.get_freeze_count(): frozen objects that
    # other tests left behind may be freed meanwhile, which lowers the count without anyone unfreezing.
    calls: list[str] = []

    class WatchedGc:
        isenabled = staticmethod(gc.isenabled)
        get_freeze_count = staticmethod(gc.get_freeze_count)

        @staticmethod
        def freeze() -> None:
            calls.append("freeze")
            gc.freeze()

        @staticmethod
        def unfreeze() -> None:
            calls.append("unfreeze")
            gc.unfreeze()

    monkeypatch.setattr(jsonvalue, "gc", WatchedGc)
    assert _young_sizes(value_steps(BODY, piece_bytes=32 * 1024))[1] == ROWS
    assert calls and calls[-1] == "unfreeze"  # the watch sees the decoder's calls when nothing else is frozen
    calls.clear()
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        steps = value_steps(BODY, piece_bytes=32 * 1024)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                value = done.value
                break
        assert value == ROWS and calls == []
    finally:
        gc.unfreeze()
