"""Arrivals recorded a channel read at a time (`BatchPolicy.on_arrivals`) leave the policy exactly
as recorded one by one (`on_arrival`): the same windows, averages and decisions, bit for bit.

The dispatch loop records every call of one read together; no decision reads the arrival model in
between, so only the state after the read matters, and it must not differ in the last bit.
"""
from __future__ import annotations

import random
from typing import Any

import pytest

from shmserve.batching import ArrivalModel, BatchPolicy

US = 1e-6


def state(p: BatchPolicy) -> dict[str, Any]:
    a = p.arrivals
    out: dict[str, Any] = {k: v for k, v in vars(a).items() if not k.startswith("_gaps") and k != "_echo_lags"}
    for name in ("_gaps", "_echo_lags"):
        w = getattr(a, name)
        out[name] = (list(w._values), list(w._sorted), w.value() if len(w) else None)
    out["items_per_call"] = p.items_per_call
    out["calls_seen"] = p._calls_seen
    return out


@pytest.mark.parametrize("seed", range(12))
def test_reads_of_many_calls_leave_the_policy_as_calls_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    one, many = BatchPolicy(64, 10e-3), BatchPolicy(64, 10e-3)
    t = 100.0
    for step in range(300):
        n = rng.choice([0, 1, 2, 3, 5, 8, 40, 64, 300])  # reads of every size, past both windows
        times, sizes = [], []
        for _ in range(n):
            t += rng.choice([0.0, rng.expovariate(1 / (20 * US)), rng.expovariate(1 / (2e-3))])
            stamp = t - rng.random() * 50 * US if rng.random() < 0.2 else t  # seen out of stamp order
            times.append(stamp)
            sizes.append(rng.choice([0, 1, 1, 1, 4, 16]))
        for ts, k in zip(times, sizes):
            one.on_arrival(ts, k)
        many.on_arrivals(times, sizes)
        assert state(one) == state(many), f"step {step}"
        if rng.random() < 0.3:
            done, items, secs = t + rng.random() * 1e-4, rng.randint(1, 64), rng.uniform(50, 500) * US
            one.on_batch_done(items, secs, done_at=done)
            many.on_batch_done(items, secs, done_at=done)
        queue = [rng.choice([1, 2, 4]) for _ in range(rng.randint(1, 20))]
        now = t + rng.random() * 1e-3
        assert one.decide(queue, t - 1e-3, t, now) == many.decide(queue, t - 1e-3, t, now)


def test_an_empty_read_changes_nothing() -> None:
    a = ArrivalModel()
    a.observe(1.0)
    before = dict(vars(a))
    a.observe_many([])
    assert vars(a) == before
