"""Unit tests for the adaptive batching policy, driven with a fake clock (no processes, no sleeps)."""

from __future__ import annotations

import math
import random

import pytest

from shmserve.batching import ArrivalModel, BatchPolicy, CostModel, Decision, fifo_prefix

US = 1e-6
MS = 1e-3


def trained_policy(
    fixed: float = 1 * MS,
    per_item: float = 10 * US,
    gap: float = 10 * US,
    max_batch_size: int = 64,
    max_latency_s: float = 10 * MS,
    t0: float = 100.0,
) -> tuple[BatchPolicy, float]:
    """A policy that has measured batches of many sizes and seen calls every ``gap`` seconds.

    Returns the policy and the time of the last arrival it saw.
    """
    policy = BatchPolicy(max_batch_size, max_latency_s)
    for n in range(1, max_batch_size + 1, 3):
        policy.on_batch_done(n, fixed + per_item * n)
    t = t0
    for _ in range(40):
        t += gap
        policy.on_arrival(t, 1)
    return policy, t


# ---- fifo_prefix -------------------------------------------------------------------------------


def test_fifo_prefix_takes_longest_prefix_without_splitting_a_call() -> None:
    assert fifo_prefix([30, 30, 10, 1], 64) == (2, 60)  # 10 would fit after skipping; FIFO forbids
    assert fifo_prefix([1] * 70, 64) == (64, 64)
    assert fifo_prefix([64, 1], 64) == (1, 64)
    assert fifo_prefix([], 64) == (0, 0)


def test_fifo_prefix_oversized_call_runs_alone() -> None:
    assert fifo_prefix([100, 1, 1], 64) == (1, 100)
    assert fifo_prefix([1, 100], 64) == (1, 1)


# ---- BatchPolicy -------------------------------------------------------------------------------


def test_empty_queue_waits_for_an_arrival() -> None:
    d = BatchPolicy(64, 0.01).decide([], 0.0, 0.0, 5.0)
    assert d == Decision(False, 0, math.inf, 0)


def test_lone_caller_runs_immediately_on_a_fresh_policy() -> None:
    policy = BatchPolicy(64, 0.01)
    policy.on_arrival(1.0, 1)
    d = policy.decide([1], 1.0, 1.0, 1.0)
    assert d.run and d.items == 1 and d.calls == 1


def test_lone_caller_runs_immediately_at_low_load() -> None:
    # Calls come every 50 ms, a batch costs about 1 ms: nothing to wait for.
    policy, t = trained_policy(gap=50 * MS)
    d = policy.decide([1], t, t, t)
    assert d.run and d.items == 1


def test_no_wait_before_any_cost_is_measured_even_with_dense_arrivals() -> None:
    policy = BatchPolicy(64, 0.01)
    t = 0.0
    for _ in range(40):
        t += 1 * US
        policy.on_arrival(t, 1)
    assert policy.decide([1, 1, 1], t - 2 * US, t, t).run


def test_full_batch_runs_at_once() -> None:
    policy, t = trained_policy()
    d = policy.decide([1] * 64, t - 1 * US, t, t)
    assert d.run and d.items == 64 and d.calls == 64


def test_more_than_one_batch_queued_runs_the_fifo_prefix_at_once() -> None:
    policy, t = trained_policy()
    d = policy.decide([30, 30, 10], t - 1 * US, t, t)
    assert d.run and (d.calls, d.items) == (2, 60)


def test_oversized_call_runs_alone_at_once() -> None:
    policy, t = trained_policy()
    d = policy.decide([100, 1, 1], t - 1 * US, t, t)
    assert d.run and (d.calls, d.items) == (1, 100)


def test_waits_when_arrivals_are_dense_and_fixed_cost_high() -> None:
    policy, t = trained_policy(fixed=1 * MS, gap=10 * US)
    d = policy.decide([1] * 4, t - 30 * US, t, t)
    assert not d.run
    assert d.items == 4 and d.calls == 4
    gap = policy.arrivals.expected_gap
    assert d.wait_until == pytest.approx(t + policy.wait_gaps * gap)
    # No call came by then: run.
    assert policy.decide([1] * 4, t - 30 * US, t, d.wait_until).run


def test_does_not_wait_when_fixed_cost_is_small_against_the_gap() -> None:
    policy, t = trained_policy(fixed=20 * US, per_item=1 * US, gap=100 * US)
    assert policy.decide([1], t, t, t).run


def test_stops_waiting_once_the_batch_is_large_enough() -> None:
    # Waiting a gap g for one more item pays only while g < fixed / n.
    policy, t = trained_policy(fixed=500 * US, gap=10 * US)
    gap = policy.arrivals.expected_gap
    n_pays = int(policy.cost.fixed / gap) - 2
    n_not = int(policy.cost.fixed / gap) + 2
    assert 1 < n_pays < n_not < 64
    assert not policy.decide([1] * n_pays, t, t, t).run
    assert policy.decide([1] * n_not, t, t, t).run


def test_deadline_counts_the_estimated_run_cost() -> None:
    max_latency = 5 * MS
    policy, t = trained_policy(fixed=1 * MS, gap=10 * US, max_latency_s=max_latency)
    cost_next = policy.cost.estimate(4)
    # Just before the latest start: may wait, but not past it.
    oldest = t - (max_latency - cost_next) + 5 * US
    d = policy.decide([1] * 3, oldest, t, t)
    assert not d.run
    assert d.wait_until <= oldest + max_latency - cost_next + 1e-12
    # At the latest start: runs although arrivals are dense.
    oldest = t - (max_latency - cost_next)
    assert policy.decide([1] * 3, oldest, t, t).run


def test_no_call_waits_past_max_latency_in_a_dense_stream() -> None:
    """Drive the policy with a call every 20 us and one worker: no wait reaches past the deadline,
    and (the load being sustainable) every batch completes within max_latency of its oldest call."""
    max_latency = 3 * MS  # room for one batch of queueing (1 ms) plus the run (1 ms)
    gap = 20 * US
    policy, t = trained_policy(fixed=1 * MS, per_item=1 * US, gap=gap, max_latency_s=max_latency)
    queue: list[float] = []
    started: list[tuple[float, float, int]] = []
    waits = 0
    next_arrival = t + gap
    now = t
    while len(started) < 20:
        d = policy.decide([1] * len(queue), queue[0], queue[-1], now) if queue else Decision(False, 0, math.inf)
        if d.run:
            started.append((queue[0], now, d.items))
            del queue[: d.calls]
            busy_until = now + policy.cost.estimate(d.items)
            while next_arrival <= busy_until:  # calls that arrive while the batch runs
                queue.append(next_arrival)
                policy.on_arrival(next_arrival, 1)
                next_arrival += gap
            now = busy_until
            continue
        if queue:
            waits += 1
            assert d.wait_until + policy.cost.estimate(d.items + 1) <= queue[0] + max_latency + 1e-9
        if next_arrival <= d.wait_until:
            now = next_arrival
            queue.append(now)
            policy.on_arrival(now, 1)
            next_arrival += gap
        else:
            now = d.wait_until
    for oldest, start, items in started:
        assert start + policy.cost.estimate(items) <= oldest + max_latency + 1e-9
    assert waits > 0
    assert max(items for _, _, items in started) > 1  # it did batch


def test_waits_for_closed_loop_callers_after_a_completion() -> None:
    """Callers answer each completion with new calls about 20 us later; the policy learns to wait."""
    policy = BatchPolicy(64, 0.01)
    rng = random.Random(3)
    t = 1.0
    for _ in range(30):
        t += 300 * US
        policy.on_batch_done(16, 150 * US + 5 * US * rng.choice([8, 16, 24]), done_at=t)
        for _ in range(16):
            policy.on_arrival(t + 15 * US + rng.random() * 10 * US, 1)
        t += 40 * US
    arr = policy.arrivals
    assert arr.echo_ratio > 0.5
    assert 15 * US < arr.echo_span <= 25 * US  # callers return 15 to 25 us after a completion
    # A batch just completed; 8 calls queued long ago; the 16 callers it served will be back soon.
    done = t + 300 * US
    policy.on_batch_done(16, 230 * US, done_at=done)
    d = policy.decide([1] * 8, done - 200 * US, done - 150 * US, done)
    assert not d.run
    assert d.wait_until == pytest.approx(done + arr.echo_span)
    # Once the 16 callers are back, the policy stops waiting for them (bursts aside).
    for i in range(16):
        policy.on_arrival(done + 10 * US + i * 0.5 * US, 1)
    assert policy.arrivals.echo_remaining == 0.0
    now = done + 20 * US
    assert now < done + arr.echo_span
    assert policy.decide([1] * 24, done - 200 * US, done + 17.5 * US, now).run
    # Without the completion time the policy cannot know callers are coming back, and runs.
    plain, _ = trained_policy(fixed=150 * US, per_item=5 * US, gap=300 * US)
    assert plain.decide([1] * 8, done - 200 * US, done - 150 * US, done).run


def test_poisson_arrivals_show_no_echo() -> None:
    arr = ArrivalModel()
    rng = random.Random(5)
    t = 0.0
    next_done = 0.0
    for _ in range(20000):
        t += rng.expovariate(10000.0)
        while next_done < t:
            arr.observe_completion(next_done, 2)
            next_done += 200 * US
        arr.observe(t)
    assert arr.echo_ratio < 0.2


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchPolicy(0, 0.01)
    with pytest.raises(ValueError, match="max_latency_ms"):
        BatchPolicy(8, -1.0)


# ---- CostModel ---------------------------------------------------------------------------------


def test_cost_model_converges_on_noisy_linear_costs() -> None:
    model = CostModel()
    rng = random.Random(7)
    for _ in range(2000):
        n = rng.randint(1, 64)
        model.observe(n, (150 * US + 5 * US * n) * rng.lognormvariate(0.0, 0.05))
    assert model.fixed == pytest.approx(150 * US, rel=0.1)
    assert model.per_item == pytest.approx(5 * US, rel=0.1)
    assert model.estimate(32) == pytest.approx(310 * US, rel=0.05)


def test_cost_model_follows_a_drift() -> None:
    model = CostModel()
    for i in range(300):
        n = 1 + i % 64
        model.observe(n, 100 * US + 2 * US * n)
    for i in range(300):
        n = 1 + i % 64
        model.observe(n, 400 * US + 2 * US * n)
    assert model.fixed == pytest.approx(400 * US, rel=0.05)


def test_cost_model_with_one_batch_size_attributes_cost_to_the_fixed_part() -> None:
    model = CostModel()
    assert not model.known and model.estimate(10) == 0.0
    for _ in range(20):
        model.observe(16, 230 * US)
    assert model.known
    assert model.estimate(16) == pytest.approx(230 * US)
    assert model.per_item == 0.0


def test_cost_model_clips_a_single_stall() -> None:
    model = CostModel()
    for i in range(100):
        model.observe(1 + i % 32, 100 * US + 5 * US * (1 + i % 32))
    before = model.estimate(16)
    model.observe(16, 1.0)  # a one-second stall (GC, page faults)
    assert model.estimate(16) < 2 * before


def test_cost_model_rejects_nonsense() -> None:
    model = CostModel()
    with pytest.raises(ValueError, match="at least one item"):
        model.observe(0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        model.observe(1, math.nan)


# ---- ArrivalModel ------------------------------------------------------------------------------


def test_arrival_model_unknown_until_enough_gaps() -> None:
    arr = ArrivalModel(min_gaps=4)
    for t in (0.0, 1.0, 2.0, 3.0):
        arr.observe(t)
        assert arr.expected_gap == math.inf
    arr.observe(4.0)
    assert arr.expected_gap == pytest.approx(1.0 / math.log(2.0))  # the median, scaled to a mean
    assert arr.echo_span == math.inf and arr.echo_remaining == 0.0  # no completion seen


def test_arrival_model_estimates_the_poisson_mean_gap() -> None:
    arr = ArrivalModel(window=1024)
    rng = random.Random(11)
    t = 0.0
    for _ in range(5000):
        t += rng.expovariate(1 / (100 * US))
        arr.observe(t)
    assert arr.expected_gap == pytest.approx(100 * US, rel=0.15)


def test_arrival_model_sees_the_gap_inside_bursts() -> None:
    arr = ArrivalModel()
    t = 0.0
    for _ in range(20):
        t += 500 * US  # the long gap between bursts
        for _ in range(31):
            t += 1 * US
            arr.observe(t)
    assert arr.expected_gap < 2 * US
