"""Edges of the adaptive batching policy the main tests leave open, with a fake clock.

A typical call larger than the room left in the batch; the arrival model's window evicting old
gaps and calls seen out of stamp order; waiting for a completion's echo only when the wait pays,
for no more calls than fit; the cost model's intercept never below zero.
"""
from __future__ import annotations

import random

import pytest

from shmserve.batching import ArrivalModel, BatchPolicy, CostModel

US = 1e-6
MS = 1e-3


def policy_of_calls(items_per_call: int, max_batch_size: int, fixed: float = 1 * MS,
                    gap: float = 10 * US) -> tuple[BatchPolicy, float]:
    """A policy that measured batches of many sizes (a high fixed cost) and saw dense calls of
    `items_per_call` items: waiting for the next call pays whenever that call fits."""
    policy = BatchPolicy(max_batch_size, 10 * MS)
    for n in range(1, max_batch_size + 1, 3):
        policy.on_batch_done(n, fixed + 10 * US * n)
    t = 100.0
    for _ in range(40):
        t += gap
        policy.on_arrival(t, items_per_call)
    assert policy.items_per_call == items_per_call
    return policy, t


def test_a_typical_call_that_fits_the_room_left_is_waited_for() -> None:
    policy, t = policy_of_calls(8, max_batch_size=24)
    assert not policy.decide([8], t - 20 * US, t, t).run  # room 16
    assert not policy.decide([8, 8], t - 20 * US, t, t).run  # room 8: the next call fills it exactly


def test_a_typical_call_larger_than_the_room_left_runs_the_batch_at_once() -> None:
    # Waiting cannot help: the call it waits for would not fit, and would start the next batch.
    policy, t = policy_of_calls(8, max_batch_size=20)
    assert not policy.decide([8], t - 20 * US, t, t).run  # room 12: waits
    d = policy.decide([8, 8], t - 20 * US, t, t)  # room 4 < 8
    assert d.run and (d.calls, d.items) == (2, 16)


def test_the_gap_window_forgets_gaps_older_than_its_size() -> None:
    arr = ArrivalModel(window=8, min_gaps=4)
    t = 0.0
    for _ in range(30):  # a long quiet spell: gaps of one second
        t += 1.0
        arr.observe(t)
    assert arr.expected_gap == pytest.approx(1.0 / 0.6931471805599453)
    for _ in range(8):  # then a burst: the window holds only its gaps now
        t += 1 * MS
        arr.observe(t)
    assert arr.expected_gap == pytest.approx(1 * MS / 0.6931471805599453)
    for _ in range(8):  # and back
        t += 0.5
        arr.observe(t)
    assert arr.expected_gap == pytest.approx(0.5 / 0.6931471805599453)


def _closed_loop_policy(echo_lag: float) -> tuple[BatchPolicy, float]:
    """Callers send their next call `echo_lag` (+ up to 10%) after each completion of 16 items; quiet
    spells between rounds keep the average rate low, so the echo stands out of it."""
    policy = BatchPolicy(64, 50 * MS)
    rng = random.Random(3)
    t = 1.0
    for _ in range(30):
        t += 300 * US
        policy.on_batch_done(16, 150 * US + 5 * US * rng.choice([8, 16, 24]), done_at=t)
        for _ in range(16):
            policy.on_arrival(t + echo_lag * (1.0 + 0.1 * rng.random()), 1)
        t += echo_lag + 50 * MS
    done = t + 300 * US
    policy.on_batch_done(16, 230 * US, done_at=done)
    return policy, done


def test_an_echo_too_far_off_to_pay_is_not_waited_for() -> None:
    policy, done = _closed_loop_policy(echo_lag=2 * MS)
    arr = policy.arrivals
    assert arr.echo_ratio > 0.5 and arr.echo_remaining > 8  # the callers will be back, but late
    echo_end = done + arr.echo_span
    # 8 calls queued: waiting w for about 16 more pays only while w < fixed * 16 / 8.
    pays_for = policy.cost.fixed / 8 * arr.echo_remaining
    assert echo_end - done > 2 * pays_for
    d = policy.decide([1] * 8, done - 200 * US, done - 150 * US, done)
    assert d.run, f"waited {(d.wait_until - done) / MS:.2f} ms for an echo worth {pays_for / MS:.2f} ms"
    # Close to the end of the echo the rest of the wait pays: then it waits.
    now = echo_end - pays_for / 2
    d = policy.decide([1] * 8, done - 200 * US, done - 150 * US, now)
    assert not d.run and d.wait_until == pytest.approx(echo_end)


def test_the_echo_waited_for_is_capped_by_the_room_left() -> None:
    # 16 callers are coming back, but only 2 more items fit: the wait is weighed against those 2.
    policy, done = _closed_loop_policy(echo_lag=20 * US)
    arr = policy.arrivals
    queued = 62
    budget = policy.cost.fixed / queued
    echo_end = done + arr.echo_span
    assert budget * 2 < echo_end - done < budget * arr.echo_remaining  # pays for 16, not for 2
    assert policy.decide([1] * queued, done - 200 * US, done - 150 * US, done).run


def test_a_call_stamped_before_the_latest_one_does_not_lengthen_the_next_gap() -> None:
    # Calls from several clients are seen in intake order, not in the order of their stamps.
    arr = ArrivalModel(window=1, min_gaps=1)
    arr.observe(1.0)
    arr.observe(0.5)  # a call submitted earlier, seen later
    arr.observe(1.1)
    assert arr.expected_gap == pytest.approx(0.1 / 0.6931471805599453)


def test_the_cost_model_never_estimates_a_negative_fixed_cost() -> None:
    model = CostModel()
    for n in range(1, 65):
        model.observe(n, 10 * US * n - 5 * US)  # a fit's intercept would be -5 us
    assert model.fixed == 0.0
    assert model.per_item == pytest.approx(10 * US, rel=0.05)
    assert model.estimate(1) > 0.0
