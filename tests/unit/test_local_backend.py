"""The in-process backend (init_local, embedded runners) refuses and bounds calls as served runners do."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import shmserve
from shmserve.deadline import request_deadline
from shmserve.errors import InvalidInput, RunnerTimeout


class Gate(shmserve.Runnable):
    def __init__(self) -> None:
        self.release = threading.Event()

    @shmserve.Runnable.method(batchable=True)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2

    @shmserve.Runnable.method(batchable=True, accepts_empty=True)
    def tolerant(self, x: np.ndarray) -> int:
        return int(x.shape[0])

    @shmserve.Runnable.method
    def hang(self) -> str:
        self.release.wait(10)  # held until the test releases it (bounded, so nothing outlives the test)
        return "released"

    @shmserve.Runnable.method
    def quick(self) -> str:
        return "quick"


@pytest.fixture
def runner():
    r = shmserve.Runner(Gate, name="gate")
    r.init_local(quiet=True)
    yield r
    r._backend.instance.release.set()  # type: ignore[union-attr]
    r._unbind()


def test_a_zero_item_call_is_refused_with_the_served_message(runner) -> None:
    empty = np.zeros((0, 3), np.float32)
    want = Gate.methods["predict"].empty_call_error([(0, 3)])  # what a worker answers (worker/runner.py)
    with pytest.raises(InvalidInput) as info:
        runner.predict.run(empty)
    assert str(info.value) == want and "accepts_empty=True" in want
    with pytest.raises(InvalidInput, match="0 items along batch dim 0"):
        asyncio.run(runner.predict.async_run(x=empty))
    assert runner.tolerant.run(empty) == 0  # declared: it gets the empty call
    np.testing.assert_array_equal(runner.predict.run(np.ones((1, 3))), np.full((1, 3), 2.0))


def test_a_hung_call_raises_the_timeout_error_instead_of_hanging(runner) -> None:
    with pytest.raises(RunnerTimeout, match="gate.hang timed out"):
        runner.hang.run(timeout=0.2)
    with pytest.raises(RunnerTimeout, match="gate.hang timed out"):
        asyncio.run(runner.hang.async_run(timeout=0.2))
    runner._backend.instance.release.set()
    assert runner.quick.run(timeout=5) == "quick"  # the backend serves again once the method returns


def test_the_runner_timeout_and_the_request_deadline_bound_local_calls() -> None:
    r = shmserve.Runner(Gate, name="gate_default", timeout=0.2)
    r.init_local(quiet=True)
    try:
        with pytest.raises(RunnerTimeout, match="its timeout, 0.2 s"):
            r.hang.run()
        r._backend.instance.release.set()
        assert r.quick.run() == "quick"
    finally:
        r._backend.instance.release.set()
        r._unbind()
    r = shmserve.Runner(Gate, name="gate_scope")
    r.init_local(quiet=True)
    try:
        import time

        token = request_deadline.set(time.monotonic() + 0.2)  # what an API with a timeout sets
        try:
            with pytest.raises(RunnerTimeout, match="the deadline of the request"):
                r.hang.run()
        finally:
            request_deadline.reset(token)
    finally:
        r._backend.instance.release.set()
        r._unbind()
