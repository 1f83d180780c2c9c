"""`RequestTask` (shmserve/_native/task.c): a request's coroutine run without an asyncio.Task, as a Task would run it.

Each behaviour is checked against asyncio.Task itself where the two can be compared
(`both`): the values a coroutine sees and what becomes of it must be the same.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from shmserve.http import app as app_mod

NATIVE = app_mod._native_task
needs_native = pytest.mark.skipif(NATIVE is None, reason="shmserve._native._task not built (or pure Python forced)")

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


class Conn:
    task: Any = None


def start_native(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, conn: Conn) -> None:
    NATIVE.start_task(coro, loop, conn)


def start_asyncio(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop, conn: Conn) -> None:
    conn.task = asyncio.Task(coro, loop=loop)


both = pytest.mark.parametrize("start", [pytest.param(start_native, marks=needs_native, id="RequestTask"),
                                         pytest.param(start_asyncio, id="asyncio.Task")])
Start = Callable[[Coroutine[Any, Any, Any], asyncio.AbstractEventLoop, Conn], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> Any:
    lp = asyncio.new_event_loop() if request.param == "asyncio" else uvloop.new_event_loop()
    yield lp
    lp.close()


def run(loop: asyncio.AbstractEventLoop, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return loop.run_until_complete(main())


@both
def test_it_runs_to_the_end_in_its_own_context_as_the_current_task(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    seen: list[Any] = []
    conn = Conn()

    async def coro() -> None:
        seen.append(asyncio.current_task() is conn.task)
        var.set("inside")
        await asyncio.sleep(0)  # a bare yield
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 7)
        seen.append(await fut)
        seen.append((var.get(), asyncio.current_task() is conn.task))

    async def main() -> None:
        var.set("outside")
        start(coro(), loop, conn)
        while not conn.task.done():
            await asyncio.sleep(0)
        seen.append(var.get())

    run(loop, main)
    assert seen == [True, 7, ("inside", True), "outside"]
    assert conn.task.done() and not conn.task.cancelled()


@needs_native
def test_its_first_step_runs_at_once_and_conn_task_is_set_before(loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[Any] = []

    async def coro() -> None:
        seen.append(conn.task)
        await asyncio.sleep(0)

    async def main() -> None:
        start_native(coro(), loop, conn)
        assert seen == [conn.task] and seen[0] is not None and not conn.task.done()
        await asyncio.sleep(0)
        assert conn.task.done()

    run(loop, main)


@both
def test_cancel_while_it_waits_throws_cancelled_error_into_it(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[Any] = []

    async def coro() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError as exc:
            seen.append(("cancelled", exc.args))
            raise

    async def main() -> None:
        start(coro(), loop, conn)
        await asyncio.sleep(0)
        task = conn.task
        assert task.cancel("bye") and task.cancelling() == 1
        for _ in range(3):
            await asyncio.sleep(0)
        assert task.done() and task.cancelled() and not task.cancel()

    run(loop, main)
    assert seen == [("cancelled", ("bye",))]


@both
def test_cancel_before_its_next_step_and_from_inside(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[str] = []

    async def coro() -> None:
        fut = loop.create_future()
        fut.set_result(None)
        conn.task.cancel()  # from inside: its next wait is cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("inside")
        await asyncio.sleep(0)
        seen.append("resumed")
        await asyncio.sleep(10)

    async def main() -> None:
        start(coro(), loop, conn)
        for _ in range(4):
            await asyncio.sleep(0)
        assert seen == ["inside", "resumed"]
        conn.task.cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        assert conn.task.cancelled()

    run(loop, main)


needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout and TaskGroup came in 3.11")


@needs_311
@both
def test_asyncio_timeout_and_wait_for_work_inside(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[Any] = []

    async def coro() -> None:
        try:
            async with asyncio.timeout(0.01):  # type: ignore[attr-defined]
                await asyncio.sleep(10)
        except TimeoutError:
            seen.append("timeout")
        seen.append(conn.task.cancelling())
        seen.append(await asyncio.wait_for(asyncio.sleep(0, "ok"), 1))

    async def main() -> None:
        start(coro(), loop, conn)
        while not conn.task.done():
            await asyncio.sleep(0.005)

    run(loop, main)
    assert seen == ["timeout", 0, "ok"]


@needs_311
@both
def test_a_task_group_inside_it(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[Any] = []

    async def child(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("child failed")

    async def coro() -> None:
        async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
            a, b = tg.create_task(child(1)), tg.create_task(child(2))
        seen.append(a.result() + b.result())
        try:
            async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
                tg.create_task(failing())
                tg.create_task(asyncio.sleep(10))
        except Exception as exc:  # an ExceptionGroup of the ValueError
            seen.append(f"group failed: {exc.exceptions!r}")  # type: ignore[attr-defined]
        seen.append(conn.task.cancelling())

    async def main() -> None:
        start(coro(), loop, conn)
        while not conn.task.done():
            await asyncio.sleep(0.001)

    run(loop, main)
    assert seen == [3, "group failed: (ValueError('child failed'),)", 1]  # 3.11's TaskGroup leaves its cancel() of the parent counted (a Task too)


@both
def test_a_future_of_another_loop_is_refused_as_a_task_refuses_it(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[str] = []
    other = asyncio.new_event_loop()

    async def coro() -> None:
        try:
            await other.create_future()
        except RuntimeError as exc:
            seen.append("different loop" if "different loop" in str(exc) else str(exc))

    async def main() -> None:
        start(coro(), loop, conn)
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        run(loop, main)
    finally:
        other.close()
    assert seen == ["different loop"] and conn.task.done()


@needs_native
def test_an_exception_that_escapes_goes_to_the_loops_handler(loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, ctx: reported.append(ctx))

    async def coro() -> None:
        await asyncio.sleep(0)
        raise ValueError("a bug")

    async def main() -> None:
        start_native(coro(), loop, conn)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, main)
    (ctx,), = [reported]
    assert isinstance(ctx["exception"], ValueError) and ctx["task"] is conn.task and conn.task.done()


@needs_native
def test_keyboard_interrupt_propagates(loop: asyncio.AbstractEventLoop) -> None:
    async def coro() -> None:
        raise KeyboardInterrupt

    async def main() -> None:
        with pytest.raises(KeyboardInterrupt):
            start_native(coro(), loop, Conn())

    run(loop, main)


@needs_native
def test_started_from_inside_a_task_it_puts_that_task_back(loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()
    seen: list[bool] = []

    async def coro() -> None:
        seen.append(asyncio.current_task() is conn.task)
        await asyncio.sleep(0)

    async def main() -> None:
        me = asyncio.current_task()
        start_native(coro(), loop, conn)  # as a reply from one request's task dispatches the next
        seen.append(asyncio.current_task() is me)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, main)
    assert seen == [True, True] and conn.task.done()


@needs_native
def test_it_holds_nothing_once_done_and_is_collected(loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()

    class Big:
        pass

    held: list[weakref.ref[Big]] = []

    async def coro() -> None:
        big = Big()
        held.append(weakref.ref(big))
        await asyncio.sleep(0)

    async def main() -> None:
        start_native(coro(), loop, conn)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run(loop, main)
    assert conn.task.done() and conn.task.get_coro() is None and held[0]() is None
    ref = weakref.ref(conn.task)
    conn.task = None
    gc.collect()
    assert ref() is None


@both
def test_cancelled_from_inside_then_returning_leaves_it_cancelled(start: Start, loop: asyncio.AbstractEventLoop) -> None:
    conn = Conn()

    async def coro() -> None:
        conn.task.cancel()  # nothing awaited after: the cancellation is never thrown in

    async def main() -> None:
        start(coro(), loop, conn)
        for _ in range(2):
            await asyncio.sleep(0)

    run(loop, main)
    assert conn.task.done() and conn.task.cancelled()
