"""The client's waiting logic driven through a fake link: no worker process, no channel.

`RunnerClient(transport=...)` takes the links from a factory (as httpx takes a
transport): `FakeLink` queues each submitted call and the test answers them,
in any order, then wakes the client the way a worker does (the reply semaphore
and the event loop's eventfd). What is exercised is the client's side: the sync
leader and followers, the event loop reader, the completion thread, deadlines,
cancellation, a worker's death and the limits.
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import deque
from typing import Any

import orjson
import pytest

from shmserve.client import RunnerClient
from shmserve.errors import RunnerOverloaded, RunnerTimeout, RunnerUnavailable
from shmserve.link import Pending, new_pending
from shmserve.shm.signal import Signal
from shmserve.traces import call_traces

METHODS = {"echo": {"index": 0, "stream": False}}


class FakeLink:
    """A link whose worker is the test: `answer` completes a call, `die` makes the worker vanish."""

    def __init__(self, runner: str, worker: dict[str, Any]) -> None:
        self.index = worker["index"]
        self.worker_pid = 4000 + self.index
        self.live = False
        self.last_attempt = 0.0
        self.healthy_until = float("inf")  # `healthy` always says so
        self.pending: dict[int, Pending] = {}
        self.methods: dict[str, Any] = {}
        self.result_arena = None
        self.room = 1000  # calls the fake channel takes before it reads as full
        self.up = True
        self.answers: deque[tuple[Pending, Any, BaseException | None]] = deque()
        self.cancelled: list[int] = []
        self.sent: dict[int, bytes] = {}  # each call's metadata (its arguments), by seq
        self.reply: Signal | None = None
        self.loop_wake: int | None = None
        self.posts: list[int] = []  # one entry per doorbell post
        self.unposted = 0  # calls published since the last post that did not post

    # -- the Link API ---------------------------------------------------------------------
    def connect(self, slots: int, arena_bytes: int, reply: Signal, loop_wake: int | None,
                timeout: float = 10.0) -> None:
        if not self.up:
            raise OSError("no worker listens")
        self.reply, self.loop_wake, self.live, self.methods = reply, loop_wake, True, METHODS

    def send_loop_wake(self, fd: int) -> None:
        self.loop_wake = fd

    def submit(self, seq: int, index: int, method: str, tensors: list[Any], offsets: list[int], meta: bytes,
               meta_off: int, nbytes: int, align: int, deadline: float | None, stream: Any = None,
               external: Any = None, post: bool = True) -> Pending | None:
        if len(self.pending) >= self.room:
            return None
        p = new_pending(seq, self, 0, None, method, time.monotonic(), call_traces.get())
        p.stream = stream
        self.pending[seq] = p
        self.sent[seq] = meta
        if post:
            self.ring()
        else:
            self.unposted += 1
        return p

    def ring(self) -> None:
        self.posts.append(self.unposted)  # how many calls published without a post this post covers
        self.unposted = 0

    def cancel(self, p: Pending) -> None:
        if p.seq in self.pending:
            self.cancelled.append(p.seq)

    def collect(self, decode: Any, done: list[Any]) -> int:
        n = 0
        while self.answers:
            p, value, error = self.answers.popleft()
            if self.pending.pop(p.seq, None) is None:
                continue
            done.append((p, None if p.abandoned else value, error))
            n += 1
        return n

    def healthy(self, now: float, limits: Any) -> bool:
        return True

    def alive(self) -> bool:
        return self.up

    def lease(self, block_off: int, block_len: int) -> Any:
        raise AssertionError("the fake link has no result blocks")

    def close(self) -> list[Pending]:
        self.live = False
        failed = list(self.pending.values())
        self.pending.clear()
        return failed

    def close_board(self) -> None:
        pass

    # -- the worker's side, played by the test --------------------------------------------
    def answer(self, p: Pending, value: Any = None, error: BaseException | None = None) -> None:
        """The worker publishes call `p`'s result and posts the client."""
        self.answers.append((p, value, error))
        assert self.reply is not None
        self.reply.post()
        if self.loop_wake is not None:
            os.eventfd_write(self.loop_wake, 1)

    def die(self) -> None:
        self.up = False


def record(workers: int = 1, max_queue_size: int = 64, timeout: float | None = 30.0) -> dict[str, Any]:
    return {"arena_mb": 1, "max_queue_size": max_queue_size, "timeout": timeout, "lease": "",
            "workers": [{"index": i, "socket": f"/nonexistent/{i}", "health": None} for i in range(workers)]}


@pytest.fixture
def make_client():
    made: list[RunnerClient] = []

    def make(**kw: Any) -> tuple[RunnerClient, list[FakeLink]]:
        client = RunnerClient("fake", 1.0, record=record(**kw), transport=FakeLink)
        made.append(client)
        return client, client.links  # type: ignore[return-value]

    yield make
    for c in made:
        c.close()


def wait_until(cond: Any, within: float = 5.0) -> Any:
    end = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.001)


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # handed to the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_sync_call_waits_for_its_answer(make_client) -> None:
    client, (link,) = make_client()
    t, out = in_thread(client.call, "echo", (1,), {}, None)
    (p,) = wait_until(lambda: list(link.pending.values()))
    assert client.statistics()["in_flight"] == 1 and not t.join(0.05) and t.is_alive()  # still waiting
    link.answer(p, 42)
    t.join(5)
    assert out == [42]
    stats = client.statistics()
    assert stats["in_flight"] == 0 and stats["calls_sent"] == 1 and stats["links"][0]["in_flight"] == 0


def test_sync_callers_answered_out_of_order_each_get_their_own_result(make_client) -> None:
    client, (link,) = make_client()
    calls = [in_thread(client.call, "echo", (i,), {}, None) for i in range(6)]
    pending = wait_until(lambda: len(link.pending) == 6 and sorted(link.pending.values(), key=lambda p: p.seq))
    assert wait_until(lambda: client.statistics()["readers"]["followers"] >= 1)  # one leads, the others follow
    order = list(pending)
    random.Random(7).shuffle(order)
    for p in order:
        link.answer(p, orjson.loads(link.sent[p.seq])["a"][0]["v"])  # the result is the call's argument
    for t, _ in calls:
        t.join(5)
    assert [out for _, out in calls] == [[i] for i in range(6)]


def test_an_error_answer_is_raised_to_its_caller(make_client) -> None:
    client, (link,) = make_client()
    t, out = in_thread(client.call, "echo", (), {}, None)
    (p,) = wait_until(lambda: list(link.pending.values()))
    link.answer(p, error=ValueError("bad"))
    t.join(5)
    assert isinstance(out[0], ValueError)


def test_async_calls_answered_out_of_order_on_the_loop_reader(make_client) -> None:
    client, (link,) = make_client()

    async def main() -> None:
        tasks = [asyncio.ensure_future(client.async_call("echo", (i,), {}, None)) for i in range(10)]
        while len(link.pending) < 10:
            await asyncio.sleep(0.001)
        assert link.loop_wake is not None  # the first loop reads for itself, woken by the eventfd
        order = list(link.pending.values())
        random.Random(3).shuffle(order)
        for p in order:
            link.answer(p, p.seq * 10)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert results == sorted(results) and len(set(results)) == 10
        stats = client.statistics()
        assert stats["in_flight"] == 0 and stats["readers"]["loop_reader"] and stats["deadlines_watched"] >= 1

    asyncio.run(main())


def test_an_event_loop_posts_the_doorbell_once_per_turn(make_client) -> None:
    """While calls are in flight, the calls made in one turn of a loop are published at once and posted
    together when the turn's callbacks have run (before: one post per call); a call with none other in
    flight, and a synchronous call, post at once."""
    client, (link,) = make_client()

    async def main() -> None:
        tasks = [asyncio.ensure_future(client.async_call("echo", (i,), {}, None)) for i in range(8)]
        await asyncio.sleep(0)  # the 8 tasks run their first step in this turn
        assert len(link.pending) == 8 and link.posts == [0] and link.unposted == 7  # the first posted at once
        while len(link.posts) < 2:
            await asyncio.sleep(0)
        assert link.posts == [0, 7] and link.unposted == 0  # one post for the turn's 7 others
        more = asyncio.ensure_future(client.async_call("echo", (8,), {}, None))
        await _pending(link, 9)
        while len(link.posts) < 3:
            await asyncio.sleep(0)
        assert link.posts == [0, 7, 1]  # made while 8 are in flight: posted the next pass
        for p in list(link.pending.values()):
            link.answer(p, p.seq)
        assert await asyncio.wait_for(asyncio.gather(*tasks, more), 5) == list(range(9))
        lone = asyncio.ensure_future(client.async_call("echo", (9,), {}, None))
        await _pending(link, 1)
        assert link.posts == [0, 7, 1, 0] and link.unposted == 0  # none in flight: posted by the call itself
        link.answer(next(iter(link.pending.values())), 9)
        assert await asyncio.wait_for(lone, 5) == 9

    asyncio.run(main())
    t, out = in_thread(client.call, "echo", (10,), {}, None)
    (p,) = wait_until(lambda: list(link.pending.values()))
    assert link.posts == [0, 7, 1, 0, 0] and link.unposted == 0  # a synchronous call posts at once
    link.answer(p, 10)
    t.join(5)
    assert out == [10]


def test_a_second_loop_is_served_by_the_completion_thread(make_client) -> None:
    client, (link,) = make_client()

    async def first() -> None:
        t = asyncio.ensure_future(client.async_call("echo", (), {}, None))
        p = await _pending(link, 1)
        link.answer(p, "first")
        assert await t == "first"

    first_loop = asyncio.new_event_loop()
    first_loop.run_until_complete(first())  # this loop stays open: it keeps the eventfd reader
    try:
        result: list[Any] = []

        def other() -> None:
            async def second() -> None:
                t = asyncio.ensure_future(client.async_call("echo", (), {}, None))
                p = await _pending(link, 1)
                link.loop_wake = None  # the worker only posts the semaphore: the completion thread reads
                link.answer(p, "second")
                result.append(await asyncio.wait_for(t, 5))
            asyncio.run(second())

        th = threading.Thread(target=other)
        th.start()
        th.join(10)
        assert result == ["second"] and client.statistics()["readers"]["completion_thread"]
    finally:
        first_loop.close()


async def _pending(link: FakeLink, n: int) -> Pending:
    while len(link.pending) < n:
        await asyncio.sleep(0.001)
    return max(link.pending.values(), key=lambda p: p.seq)


def test_a_sync_timeout_cancels_the_call_and_its_late_answer_is_dropped(make_client) -> None:
    client, (link,) = make_client()
    with pytest.raises(RunnerTimeout, match="timed out"):
        client.call("echo", (), {}, 0.05)
    (p,) = link.pending.values()
    assert link.cancelled == [p.seq] and p.abandoned
    link.answer(p, "late")
    t, out = in_thread(client.call, "echo", (), {}, None)
    q = wait_until(lambda: [x for x in link.pending.values() if x is not p])[0]
    link.answer(q, "fresh")
    t.join(5)
    assert out == ["fresh"] and client.statistics()["in_flight"] == 0


def test_an_async_timeout_fires_from_the_loop_timer(make_client) -> None:
    client, (link,) = make_client()

    async def main() -> None:
        slow = asyncio.ensure_future(client.async_call("echo", (), {}, 0.05))
        fast = asyncio.ensure_future(client.async_call("echo", (), {}, 60))
        while len(link.pending) < 2:
            await asyncio.sleep(0.001)
        p_slow, p_fast = sorted(link.pending.values(), key=lambda p: p.seq)
        link.answer(p_fast, "fast")
        assert await fast == "fast"
        with pytest.raises(RunnerTimeout, match="no result by its deadline"):
            await asyncio.wait_for(slow, 5)
        assert link.cancelled == [p_slow.seq]
        link.answer(p_slow, "late")  # dropped: nobody waits
        while link.pending:
            await asyncio.sleep(0.001)
        assert client.statistics()["in_flight"] == 0

    asyncio.run(main())


def test_cancelling_an_awaiting_task_cancels_the_call(make_client) -> None:
    client, (link,) = make_client()

    async def main() -> None:
        task = asyncio.ensure_future(client.async_call("echo", (), {}, None))
        p = await _pending(link, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert link.cancelled == [p.seq] and p.abandoned and p.future is None and p.result is None
        link.answer(p, "unwanted")
        while link.pending:
            await asyncio.sleep(0.001)
        assert p.result is None  # an abandoned call's result is not kept

    asyncio.run(main())


def test_a_worker_death_fails_its_waiting_callers(make_client) -> None:
    client, (a, b) = make_client(workers=2)
    t, out = in_thread(client.call, "echo", (), {}, None)
    link = wait_until(lambda: next((x for x in (a, b) if x.pending), None))
    link.die()
    t.join(5)
    assert isinstance(out[0], RunnerUnavailable) and "exited while serving this call" in str(out[0])
    stats = client.statistics()
    assert [x["live"] for x in stats["links"]].count(False) == 1 and stats["in_flight"] == 0
    other = b if link is a else a
    t, out = in_thread(client.call, "echo", (), {}, None)  # the next call goes to the live worker
    (p,) = wait_until(lambda: list(other.pending.values()))
    other.answer(p, "ok")
    t.join(5)
    assert out == ["ok"]


def test_a_worker_death_fails_async_callers_through_the_completion_thread(make_client) -> None:
    client, (link,) = make_client()

    async def main() -> None:
        task = asyncio.ensure_future(client.async_call("echo", (), {}, None))
        await _pending(link, 1)
        link.die()
        with pytest.raises(RunnerUnavailable, match="exited while serving"):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_the_limits_refuse_calls_at_once_or_at_the_deadline(make_client) -> None:
    client, (link,) = make_client(max_queue_size=2)
    threads = [in_thread(client.call, "echo", (), {}, None) for _ in range(2)]
    wait_until(lambda: len(link.pending) == 2)
    with pytest.raises(RunnerOverloaded, match="max_queue_size 2"):
        client.call("echo", (), {}, None)
    for p in list(link.pending.values()):
        link.answer(p, 1)
    for t, _ in threads:
        t.join(5)
    link.room = 0  # the channel is full: a call waits for room until its deadline
    start = time.monotonic()
    with pytest.raises(RunnerOverloaded, match="stayed full"):
        client.call("echo", (), {}, 0.1)
    assert time.monotonic() - start >= 0.1


def test_close_fails_calls_in_flight_and_later_calls(make_client) -> None:
    client, (link,) = make_client()
    t, out = in_thread(client.call, "echo", (), {}, None)
    wait_until(lambda: link.pending)
    client.close()
    t.join(5)
    assert isinstance(out[0], RunnerUnavailable) and "detached by close()" in str(out[0])
    with pytest.raises(RunnerUnavailable, match="closed"):
        client.call("echo", (), {}, None)
    assert client.statistics()["closed"]
