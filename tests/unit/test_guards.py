"""Guards at the sites of common mistakes: each error names the right call or the limit."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import shmserve
from shmserve.errors import BlockingCall, ConfigError, InvalidSetting
from shmserve.runner import MAX_QUEUE_SIZE
from shmserve.shm import ring
from tests.runnables import EchoRunnable


class WorkerBackend:
    """Stands in for the shared-memory client: answers at once, records the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        self.calls.append(f"call {method}")
        return args[0]

    async def async_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                         timeout: float | None) -> Any:
        self.calls.append(f"async_call {method}")
        return args[0]

    def close(self) -> None:
        pass


def _bound(name: str) -> tuple[shmserve.Runner, WorkerBackend]:
    runner = shmserve.Runner(EchoRunnable, name=name)
    backend = WorkerBackend()
    runner._bind(backend)
    return runner, backend


def test_a_sync_run_inside_a_running_loop_names_async_run() -> None:
    runner, backend = _bound("guard_loop")
    x = np.ones(2)

    async def api() -> Any:
        return runner.predict.run(x)

    with pytest.raises(BlockingCall) as info:
        asyncio.run(api())
    assert "await runner.predict.async_run(...)" in str(info.value) and "'guard_loop'" in str(info.value)
    assert isinstance(info.value, RuntimeError) and backend.calls == []


def test_the_same_calls_pass_where_they_cannot_block_a_loop() -> None:
    runner, backend = _bound("guard_ok")
    x = np.ones(2)

    async def api() -> Any:
        loop = asyncio.get_running_loop()
        in_thread = await loop.run_in_executor(None, runner.predict.run, x)  # a plain `def` API's thread
        return in_thread, await runner.predict.async_run(x)

    assert runner.predict.run(x) is x
    assert asyncio.run(api()) == (x, x)
    assert backend.calls == ["call predict", "call predict", "async_call predict"]


def test_an_in_process_runner_may_run_inside_a_loop() -> None:
    runner = shmserve.Runner(EchoRunnable, name="guard_local", runnable_init_params={"scale": 2.0})
    runner.init_local(quiet=True)

    async def api() -> Any:
        return runner.predict.run(np.ones(2))

    np.testing.assert_array_equal(asyncio.run(api()), np.full(2, 2.0))


def test_a_runnable_instance_instead_of_its_class_names_the_right_call() -> None:
    with pytest.raises(ConfigError) as info:
        shmserve.Runner(EchoRunnable())  # type: ignore[arg-type]
    assert "use Runner(EchoRunnable, runnable_init_params={...})" in str(info.value)


def test_a_queue_size_over_its_limit_is_an_error_naming_the_limit() -> None:
    assert MAX_QUEUE_SIZE == ring.DEFAULT_SLOTS == 1024  # one request slot per call in flight
    with pytest.raises(InvalidSetting, match=r"max_queue_size 5000 is above its limit of 1024.*use at most 1024"):
        shmserve.Runner(EchoRunnable, name="guard_queue", max_queue_size=5000)
    runner = shmserve.Runner(EchoRunnable, name="guard_queue", max_queue_size=MAX_QUEUE_SIZE)
    assert runner.max_queue_size == MAX_QUEUE_SIZE
    with pytest.raises(InvalidSetting, match="above its limit of 1024"):
        runner.configure(max_queue_size=MAX_QUEUE_SIZE + 1)
    assert runner.max_queue_size == MAX_QUEUE_SIZE


class CallRunnable(shmserve.Runnable):
    @shmserve.Runnable.method(batchable=False)
    def __call__(self, x: Any) -> Any:
        return x


def test_the_default_method_is_named_as_runner_async_run() -> None:
    runner = shmserve.Runner(CallRunnable, name="guard_default")
    runner._bind(WorkerBackend())

    async def api() -> Any:
        return runner.run(1)

    with pytest.raises(BlockingCall, match=r"runner\.run\(\) of runner 'guard_default'.*`await runner\.async_run"):
        asyncio.run(api())
