"""Unit tests for admission by time and zero-item calls in the batching policy (fake clock, no processes)."""

from __future__ import annotations

from shmserve.batching import BatchPolicy

MS = 1e-3


def trained(fixed: float = 10 * MS, per_item: float = 1 * MS, max_batch_size: int = 8,
            max_latency_s: float = 1.0) -> BatchPolicy:
    """A policy that measured batches of every size and saw calls every 10 µs (waiting would pay)."""
    policy = BatchPolicy(max_batch_size, max_latency_s)
    for n in range(1, max_batch_size + 1):
        policy.on_batch_done(n, fixed + per_item * n)
    t = 100.0
    for _ in range(40):
        t += 10 * 1e-6
        policy.on_arrival(t, 1)
    return policy


# ---- zero-item calls ---------------------------------------------------------------------------


def test_a_queue_of_zero_item_calls_runs_at_once_without_dividing_by_zero() -> None:
    policy = trained()
    d = policy.decide([0], 100.0, 100.0, 100.0)
    assert d.run and (d.calls, d.items) == (1, 0)


def test_a_batch_of_no_items_teaches_the_policy_nothing() -> None:
    policy = trained()
    before = (policy.cost.fixed, policy.cost.per_item)
    policy.on_batch_done(0, 5.0, done_at=101.0)  # used to raise ValueError outside any try
    assert (policy.cost.fixed, policy.cost.per_item) == before
