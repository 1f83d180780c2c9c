"""`LoopDeadlines`: the deadlines of the calls awaited on one loop, behind one timer."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from shmserve.deadline import LoopDeadlines


class Call:
    """What `LoopDeadlines` watches: a call whose ``future`` is set while its caller waits."""

    def __init__(self, fut: asyncio.Future[Any] | None) -> None:
        self.future = fut


async def _until(cond: Any, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.002)


def _timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]


def test_one_timer_for_many_calls_and_expiry_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        expired: list[int] = []
        d = LoopDeadlines(loop, lambda c: expired.append(c.n))
        calls = []
        before = _timers(loop)
        now = time.monotonic()
        for n in range(200):
            c = Call(loop.create_future())
            c.n = n  # type: ignore[attr-defined]
            calls.append(c)
            d.add(now + 0.05 + n * 0.0001, n, c)
        assert _timers(loop) - before == 1  # one timer, not one per call
        calls[3].future.set_result(1)  # finished: never expired
        calls[4].future = None  # its caller stopped waiting
        await _until(lambda: len(expired) == 198)
        assert expired == [n for n in range(200) if n not in (3, 4)]
        assert len(d) == 0 and _timers(loop) == before  # nothing left armed

    asyncio.run(main())


def test_an_earlier_deadline_rearms_the_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        expired: list[str] = []
        d = LoopDeadlines(loop, lambda c: expired.append(c.name))
        late, early = Call(loop.create_future()), Call(loop.create_future())
        late.name, early.name = "late", "early"  # type: ignore[attr-defined]
        d.add(time.monotonic() + 60, 1, late)
        d.add(time.monotonic() + 0.02, 2, early)
        await _until(lambda: expired == ["early"])
        assert d.armed_at == d.heap[0][0] and d.heap[0][2] is late  # armed again for the next one
        late.future.cancel()
        d.handle.cancel()  # type: ignore[union-attr]

    asyncio.run(main())


def test_finished_calls_do_not_pile_up() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = LoopDeadlines(loop, lambda c: None)
        live = Call(loop.create_future())
        d.add(time.monotonic() + 60, 0, live)
        for n in range(1, 10_000):
            c = Call(loop.create_future())
            d.add(time.monotonic() + 30, n, c)
            c.future = None  # the call ended at once, long before its deadline
        assert len(d) <= 2 * LoopDeadlines.COMPACT_MIN + 1
        assert any(e[2] is live for e in d.heap)  # a call still waiting is never dropped
        live.future.cancel()
        d.handle.cancel()  # type: ignore[union-attr]

    asyncio.run(main())
