"""Hostile input, deadlines, overload and hung models against real runner workers."""
from __future__ import annotations

import numpy as np
import pytest

import shmserve
from tests.runnables import GuardedRunnable

pytestmark = pytest.mark.integration


@pytest.fixture
def guarded(unique_name, shm_clean):
    r = shmserve.Runner(GuardedRunnable, name=unique_name, arena_mb=4, max_latency_ms=5)
    with shmserve.start(r, workers=1) as group:
        yield r, group


def test_zero_item_call_is_refused_and_the_worker_keeps_serving(guarded):
    r, group = guarded
    pid = r.pid.run()
    with pytest.raises(shmserve.InvalidInput, match="0 items.*accepts_empty=True"):
        r.predict.run(np.zeros((0, 784), np.float32))
    np.testing.assert_array_equal(r.predict.run(np.ones((2, 3), np.float32)), np.full((2, 3), 2.0))
    assert r.pid.run() == pid and group.restarts(r.name) == 0


def test_a_method_that_declares_it_gets_empty_calls_alone(guarded):
    r, _ = guarded
    out = r.rows.run(np.zeros((0, 5), np.float32))
    assert out.shape == (0,)
    np.testing.assert_array_equal(r.rows.run(np.zeros((3, 5), np.float32)), [3, 3, 3])
