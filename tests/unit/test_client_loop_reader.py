"""The listening event loop reads its own results: the completion thread does not race it for them.

Driven through `FakeLink` (no worker process): the test answers each call the way a
worker does (the reply semaphore, then the loop's eventfd). A result settled from
another thread reaches the loop through ``call_soon_threadsafe``; on the listening
loop that hop is pure cost (measured in a ``grpc.aio`` server: about 85% of the
results took it while the completion thread read every wake-up).
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from shmserve.client import RunnerClient
from tests.unit.test_client_fake_link import FakeLink, record


def _client() -> tuple[RunnerClient, FakeLink]:
    client = RunnerClient("fake", 1.0, record=record(), transport=FakeLink)
    client._delivery.active_s = 0.05  # the completion thread's reading window after the first call
    return client, client.links[0]  # type: ignore[return-value]


async def _answer_one(client: RunnerClient, link: FakeLink, value: Any) -> Any:
    task = asyncio.ensure_future(client.async_call("echo", (), {}, None))
    while not link.pending:
        await asyncio.sleep(0)
    (p,) = link.pending.values()
    link.answer(p, value)
    return await asyncio.wait_for(task, 5)


def test_the_listening_loop_settles_its_own_results_without_a_thread_hop() -> None:
    client, link = _client()
    hops: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert await _answer_one(client, link, -1) == -1  # the first call: the loop starts listening
        time.sleep(0.2)  # past the reading window: the completion thread stands by
        await asyncio.sleep(0.15)
        plain = loop.call_soon_threadsafe

        def counted(*args: Any, **kw: Any) -> Any:
            hops.append(threading.get_ident())
            return plain(*args, **kw)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        try:
            for i in range(200):
                assert await _answer_one(client, link, i) == i
        finally:
            del loop.call_soon_threadsafe
        stats = client.statistics()["readers"]
        assert stats["completion_thread"] and stats["loop_reader"]

    try:
        asyncio.run(main())
        assert hops == []  # every result was settled on the loop itself
    finally:
        client.close()


def test_a_second_loop_wakes_the_standing_by_thread_at_once() -> None:
    """Another loop's call (which only the completion thread serves) is answered without waiting
    for the thread's liveness tick, also after the thread stood by."""
    client, link = _client()
    first = asyncio.new_event_loop()
    try:
        assert first.run_until_complete(_answer_one(client, link, "first")) == "first"
        time.sleep(0.3)  # the thread stands by
        took: list[float] = []

        def other() -> None:
            async def second() -> None:
                task = asyncio.ensure_future(client.async_call("echo", (), {}, None))
                while not link.pending:
                    await asyncio.sleep(0)
                (p,) = link.pending.values()
                link.loop_wake = None  # only the semaphore is posted: the first loop is not woken
                t0 = time.monotonic()
                link.answer(p, "second")
                assert await asyncio.wait_for(task, 5) == "second"
                took.append(time.monotonic() - t0)
            asyncio.run(second())

        th = threading.Thread(target=other)
        th.start()
        th.join(10)
        assert len(took) == 1 and took[0] < 0.05  # the standby tick is 0.1 s
    finally:
        first.close()
        client.close()


def test_a_worker_death_is_noticed_while_the_thread_stands_by() -> None:
    client, link = _client()

    async def main() -> None:
        assert await _answer_one(client, link, 0) == 0
        await asyncio.sleep(0.2)  # the thread stands by
        task = asyncio.ensure_future(client.async_call("echo", (), {}, None))
        while not link.pending:
            await asyncio.sleep(0)
        link.die()
        try:
            await asyncio.wait_for(task, 5)
        except Exception as exc:  # noqa: BLE001
            return exc
        raise AssertionError("the call of a dead worker succeeded")

    try:
        exc = asyncio.run(main())
        assert "exited while serving" in str(exc)
    finally:
        client.close()
