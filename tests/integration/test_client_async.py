"""The shared-memory client's async path with a real worker: deadlines kept by one timer per loop."""
from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest

import shmserve
from shmserve import traces
from shmserve.link import Pending, new_pending
from tests.runnables import EchoRunnable

pytestmark = pytest.mark.integration


@pytest.fixture
def echo(unique_name, shm_clean):
    r = shmserve.Runner(EchoRunnable, name=unique_name, runnable_init_params={"scale": 2.0}, arena_mb=4,
                        max_latency_ms=1)
    with shmserve.start(r, workers=1):
        yield r


def test_async_timeouts_with_one_loop_timer(echo) -> None:
    r = echo

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(shmserve.RunnerTimeout, match="timed out"):
            await r.sleep.async_run(0.5, timeout=0.05)
        # Many calls with the default deadline (30 s) and a few short ones: one timer on the loop.
        calls = [r.predict.async_run(np.ones(4, np.float32)) for _ in range(50)]
        short = [r.sleep.async_run(0.3, timeout=0.05) for _ in range(3)]
        tasks = [asyncio.ensure_future(c) for c in calls + short]
        await asyncio.sleep(0)
        armed = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert len(armed) <= 2, armed  # the client's one timer (and at most asyncio's own sleep)
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(np.array_equal(x, np.full(4, 2.0)) for x in done[:50])
        assert all(isinstance(e, shmserve.RunnerTimeout) for e in done[50:])
        # The late results of the timed-out calls are dropped; the runner keeps serving.
        assert await r.sleep.async_run(0.0, timeout=5) > 0

    asyncio.run(main())


def test_a_finished_call_keeps_no_trace_list_of_its_request(echo) -> None:
    """The loop's deadline heap keeps finished calls a while; they must not keep the request's trace list
    (with its traces), which kept ~3 objects a call alive and started young collections (issue 17)."""
    r = echo

    async def one_request() -> list:
        sink: list = []
        traces.call_traces.set(sink)  # as an observed HTTP request does (this task's context only)
        await r.predict.async_run(np.ones(4, np.float32))
        return sink

    async def main() -> list:
        return await asyncio.create_task(one_request())

    sink = asyncio.run(main())
    assert [(runner, method) for runner, method, _ in sink] == [(r.name, "predict")]
    assert not [o for o in gc.get_referrers(sink) if isinstance(o, (Pending, type(new_pending(0, 0, 0, 0, "", 0, 0))))]
