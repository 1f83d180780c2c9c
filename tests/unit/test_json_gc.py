"""A large JSON() body decoded in steps keeps the collector's generations small and holds full collections off
until it ends, and leaves gc as it was: thresholds given back, a start-up freeze kept (`shmserve.collector`)."""
from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import orjson
import pytest

from shmserve import collector
from shmserve.collector import freeze_startup
from shmserve.errors import InvalidInput
from shmserve.jsonscan import run, run_async
from shmserve.jsonvalue import value_steps

ROWS = [[i + 0.5] * 200 for i in range(1500)]  # ~1.8 MB of JSON, 1500 row lists
BODY = orjson.dumps(ROWS)
PAIRS = [[i, i + 1] for i in range(40_000)]  # ~0.6 MB, thousands of lists in each 32 KiB piece
PAIRS_BODY = orjson.dumps(PAIRS)
PIECE = 32 * 1024


def _young_sizes(steps) -> tuple[list[int], object]:
    sizes = []
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return sizes, done.value
        sizes.append(len(gc.get_objects(0)) + len(gc.get_objects(1)))


def _full_collections() -> tuple[list[int], object]:
    runs: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            runs.append(1)
    return runs, count


@pytest.fixture(autouse=True)
def _gc_as_it_was() -> Iterator[None]:
    was, threshold = gc.isenabled(), gc.get_threshold()
    gc.enable()
    yield
    gc.set_threshold(*threshold)
    if not was:
        gc.disable()


@pytest.fixture(params=[False, True], ids=["nothing-frozen", "start-up-frozen"])
def startup_frozen(request: pytest.FixtureRequest) -> Iterator[bool]:
    if request.param:
        gc.freeze()
    yield request.param
    if request.param:
        gc.unfreeze()


def test_the_rows_already_parsed_leave_the_young_generations(startup_frozen: bool) -> None:
    gc.collect()  # young generations empty when the decode starts
    sizes, value = _young_sizes(value_steps(BODY, piece_bytes=PIECE))
    assert value == ROWS and len(sizes) > 40
    # Each step's rows settle in the oldest generation after it: what a young pass would walk stays
    # about one piece's rows (~20 here), not the thousands parsed so far; a start-up freeze changes nothing.
    assert max(sizes) < 600, max(sizes)


@pytest.fixture
def _small_long_lived_heap() -> Iterator[None]:
    # CPython runs a due full collection only once the objects moved to the oldest generation since
    # the last one exceed a quarter of those that survived it: in a test process that has imported
    # torch or keras (the whole suite), the ~40,000 lists of a decode never do, and a full collection
    # neither runs during the decode nor after it. Frozen, that heap leaves the ratio to the test.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("_small_long_lived_heap")
def test_full_collections_wait_until_the_decode_ends() -> None:
    # Thresholds that make a full collection due after every few young ones: thousands of pair lists
    # per piece trigger young passes within each orjson call.
    gc.collect()
    gc.set_threshold(100, 1, 1)
    runs, count = _full_collections()
    gc.callbacks.append(count)
    try:
        assert run(value_steps(PAIRS_BODY, piece_bytes=PIECE)) == PAIRS
        during = len(runs)
        for _ in range(3):
            junk = [[] for _ in range(1000)]  # young passes again, after the decode
            del junk
    finally:
        gc.callbacks.remove(count)
    assert during == 0
    assert len(runs) > 0  # full collections run again once the decode ended
    assert gc.get_threshold() == (100, 1, 1)


def test_a_hold_of_more_than_HOLD_MAX_S_lets_one_full_collection_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decodes that overlap without end must not keep the oldest generation's cyclic garbage forever.
    monkeypatch.setattr(collector, "HOLD_MAX_S", 0.0)
    runs, count = _full_collections()
    gc.callbacks.append(count)
    try:
        assert run(value_steps(BODY, piece_bytes=PIECE)) == ROWS
    finally:
        gc.callbacks.remove(count)
    assert len(runs) > 10  # one per piece here, with no time allowed


def test_the_hold_is_given_back_however_the_decode_ends() -> None:
    threshold = gc.get_threshold()
    with pytest.raises(InvalidInput):
        run(value_steps(BODY[:-1] + b",]", piece_bytes=PIECE))
    assert gc.get_threshold() == threshold
    steps = value_steps(BODY, piece_bytes=PIECE)
    for _ in range(10_000):
        next(steps)
        if gc.get_threshold() != threshold:
            break
    assert gc.get_threshold() != threshold  # held while the pieces are parsed
    steps.close()  # a client that went away: the task stops iterating
    assert gc.get_threshold() == threshold


def test_a_cancelled_request_gives_the_hold_back_at_once() -> None:
    threshold = gc.get_threshold()

    async def main() -> None:
        task = asyncio.create_task(run_async(value_steps(BODY, piece_bytes=PIECE), budget_s=0.0))
        for _ in range(10_000):
            await asyncio.sleep(0)
            if gc.get_threshold() != threshold:
                break
        assert gc.get_threshold() != threshold
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Not whenever the collector frees the task's frame (with full collections held, perhaps never).
        assert gc.get_threshold() == threshold
    asyncio.run(main())


def test_overlapping_decodes_hold_until_the_last_one_ends() -> None:
    threshold = gc.get_threshold()
    first, second = value_steps(BODY, piece_bytes=PIECE), value_steps(BODY, piece_bytes=PIECE)
    while gc.get_threshold() == threshold:
        next(first)
    while collector._hold.holders < 2:  # the second one past its scan, parsing pieces too
        next(second)
    assert run(first) == ROWS
    assert gc.get_threshold() != threshold  # the second decode still holds
    assert run(second) == ROWS
    assert gc.get_threshold() == threshold


def test_a_start_up_freeze_survives_a_large_decode() -> None:
    marker: list[object] = []
    gc.freeze()
    try:
        assert run(value_steps(BODY, piece_bytes=PIECE)) == ROWS
        assert not any(o is marker for g in range(3) for o in gc.get_objects(g))  # still frozen
    finally:
        gc.unfreeze()
    assert any(o is marker for o in gc.get_objects(2))  # (the probe sees an unfrozen object)


def test_a_disabled_collector_is_left_alone() -> None:
    threshold = gc.get_threshold()
    gc.disable()
    runs, count = _full_collections()
    gc.callbacks.append(count)
    try:
        steps = value_steps(BODY, piece_bytes=PIECE)
        sizes, value = _young_sizes(steps)
        assert value == ROWS and gc.get_threshold() == threshold
        assert max(sizes) > 1500  # nothing collected the rows
    finally:
        gc.callbacks.remove(count)
        gc.enable()
    assert runs == []


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freeze_startup_collects_the_start_up_garbage_and_freezes_the_rest() -> None:
    garbage, kept = _Cycle(), _Cycle()
    collected = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup()
        assert collected() is None  # garbage is not frozen for the life of the process
        assert not any(o is kept for g in range(3) for o in gc.get_objects(g))
    finally:
        gc.unfreeze()
