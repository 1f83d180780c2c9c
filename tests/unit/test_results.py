"""Parked results (`shmserve.worker.results`): a full result arena never holds up the dispatch loop."""
from __future__ import annotations

from typing import Any

import pytest

from shmserve.shm import ring
from shmserve.worker import results
from shmserve.worker.results import ResultWriter


class FakeChannel:
    """A channel with `room` results' worth of space; records what was written and how."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.closed = False
        self.written: list[tuple[Any, bool]] = []  # (request, written as a give-up error)

    def try_write_result(self, req: Any, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                         batch_size: int) -> int | None:
        if self.room > 0:
            self.room -= 1
            self.written.append((req, False))
            return code
        return None

    def write_result(self, req: Any, code: int, tensors: list[Any], meta: bytes, times: tuple[float, ...],
                     batch_size: int, wait_s: float = 2.0) -> int:
        assert wait_s == 0.0  # the dispatch loop never waits for room
        written = self.try_write_result(req, code, tensors, meta, times, batch_size)
        if written is None:
            self.written.append((req, True))  # no room: the TensorTooLarge answer
            return ring.ST_TOO_LARGE
        return written

    def flush(self) -> None:
        pass

    def response_slot_free(self) -> bool:
        return True


class Req:
    def __init__(self, channel: FakeChannel, name: str) -> None:
        self.channel, self.name = channel, name


def write(w: ResultWriter, req: Req) -> None:
    w.write(req, 0, [], b"", (0.0, 0.0, 0.0, 0.0), 1)  # type: ignore[arg-type]


def test_a_full_channel_parks_its_results_in_order_and_others_are_written_at_once() -> None:
    full, other = FakeChannel(room=0), FakeChannel(room=10)
    w = ResultWriter()
    a1, a2, b = Req(full, "a1"), Req(full, "a2"), Req(other, "b")
    write(w, a1)
    full.room = 1  # room for one appears: a2 still queues behind the parked a1
    write(w, a2)
    write(w, b)
    assert other.written == [(b, False)] and full.written == [] and w
    w.retry(now=0.0)
    assert full.written == [(a1, False)] and w  # a2 waits for more room
    full.room = 1
    w.retry(now=0.0)
    assert full.written == [(a1, False), (a2, False)] and not w


def test_a_parked_result_gives_up_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results.time, "monotonic", lambda: 100.0)
    ch = FakeChannel(room=0)
    w = ResultWriter()
    req = Req(ch, "a")
    write(w, req)
    w.retry(now=100.0 + results.RESULT_SPACE_WAIT_S)
    assert ch.written == [] and w  # not yet: exactly at the limit it still waits
    w.retry(now=100.0 + results.RESULT_SPACE_WAIT_S + 0.001)
    assert ch.written == [(req, True)] and not w


def test_results_of_a_departed_client_are_dropped() -> None:
    gone, left = FakeChannel(room=0), FakeChannel(room=0)
    w = ResultWriter()
    write(w, Req(gone, "a"))
    write(w, Req(left, "b"))
    gone.closed = True
    w.retry(now=0.0)
    assert list(w.parked) == [left]
    w.forget(left)  # type: ignore[arg-type]
    assert not w and gone.written == [] and left.written == []
