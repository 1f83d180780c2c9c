"""Unit tests for admission by time and zero-item calls in the batching policy (fake clock, no processes)."""

from __future__ import annotations

import time

import pytest

from shmserve.batching import BatchPolicy
from shmserve.runnable import MethodSignature
from shmserve.worker.channel import Request
from shmserve.worker.queues import MethodSlot, expired_reason

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


# ---- admission by time -------------------------------------------------------------------------


def test_expected_wait_is_zero_until_a_batch_was_measured() -> None:
    assert BatchPolicy(8, 0.01).expected_wait(1000, 1) == 0.0


def test_expected_wait_counts_full_batches_then_the_rest() -> None:
    policy = trained(fixed=10 * MS, per_item=1 * MS, max_batch_size=8)
    full = policy.cost.estimate(8)
    assert abs(full - 18 * MS) < 1e-6
    assert policy.expected_wait(0, 1) == pytest.approx(policy.cost.estimate(1))
    assert policy.expected_wait(15, 1) == pytest.approx(2 * full)
    assert policy.expected_wait(16, 3) == pytest.approx(2 * full + policy.cost.estimate(3))


class FakeChannel:
    """Stands in for a WorkerChannel: only the cancel marks matter here."""

    def __init__(self) -> None:
        self.cancelled: set[int] = set()

    def abandoned(self, req: Request) -> bool:
        return req.seq in self.cancelled


def request(ch: FakeChannel, seq: int, deadline: float, items: int = 1, now: float = 100.0) -> Request:
    r = Request(seq, ch, 0, 0, b"", [], now, deadline, now)  # type: ignore[arg-type]
    r.items = items
    return r


def slot(fixed: float = 100 * MS, max_batch_size: int = 2) -> MethodSlot:
    m = MethodSlot(0, MethodSignature("predict", batchable=True), None, max_batch_size, 5.0)
    for n in (1, 2, 1, 2):
        m.policy.on_batch_done(n, fixed)
    return m


def test_a_call_that_would_be_served_after_its_deadline_is_refused_on_arrival() -> None:
    ch = FakeChannel()
    m = slot(fixed=100 * MS, max_batch_size=2)  # 20 items/s
    now = 100.0
    admitted = refused = 0
    for seq in range(40):  # 40 calls at once, each due in 1 s: about 20 can be served in time
        r = request(ch, seq, now + 1.0, now=now)
        if m.refusal(r, "k", now) is None:
            m.push("k", r)
            admitted += 1
        else:
            refused += 1
    assert 16 <= admitted <= 20 and admitted + refused == 40
    assert "retry later" in (m.refusal(request(ch, 99, now + 1.0), "k", now) or "")
    # Calls without a deadline, and calls that run alone, are never refused at admission.
    assert m.refusal(request(ch, 100, 0.0), "k", now) is None
    assert m.refusal(request(ch, 101, now + 0.001), None, now) is None


def test_prune_drops_expired_calls_and_keeps_the_count() -> None:
    ch = FakeChannel()
    m = slot(fixed=100 * MS)  # the next batch would complete 0.1 s from now
    calls = [request(ch, i, 100.0 + 0.1 * (i + 1), items=1) for i in range(5)]  # due at 100.1, 100.2, ...
    for r in calls:
        m.push("k", r)
    assert m.queued == 5
    ch.cancelled.add(4)  # the caller of the last call hung up: seen when its batch is about to run
    q = m.queues["k"]
    dead = m.prune("k", q, now=100.25)
    assert [r.seq for r, _ in dead] == [0, 1, 2]
    assert "deadline passed" in dead[0][1]
    assert "sooner than its batch would complete" in dead[2][1]  # due 100.3, done ~100.35: not worth running
    assert [r.seq for r in q] == [3, 4] and m.queued == 2
    assert expired_reason(q[1], 100.25) is not None and "gave up" in str(expired_reason(q[1], 100.25))
    assert m.take("k", q, 1)[0].seq == 3 and m.queued == 1


def test_expired_reason_is_none_for_a_live_call() -> None:
    ch = FakeChannel()
    assert expired_reason(request(ch, 1, 0.0), 1e9) is None  # no deadline
    assert expired_reason(request(ch, 2, 101.0), 100.0) is None


# ---- admission while a batch runs ---------------------------------------------------------------


class PublishingChannel:
    """Stands in for a WorkerChannel in the dispatch loop: records what the worker publishes."""

    closed = False
    drained_sent: float | None = None

    def __init__(self) -> None:
        self.drained_at: list[float] = []
        self.view = self
        self.written: list[int] = []

    def set_time(self, _word: int, value: float) -> None:
        self.drained_at.append(value)

    def abandoned(self, _req: Request) -> bool:
        return False

    def try_write_result(self, req: Request, code: int, *_args: object) -> int | None:
        self.written.append(code)
        return code

    def flush(self) -> None:
        pass


def test_callers_learn_when_the_running_batch_ends_before_the_model_runs(tmp_path) -> None:
    # While the model runs, the loop reads no channel: a call due before the batch ends must be
    # refused by its caller at once (from the published drained-at time), not one batch later.
    from shmserve.worker.dispatch import Dispatcher
    from shmserve.worker_stats import WorkerStats

    ch = PublishingChannel()
    during: list[tuple[float, float]] = []

    class Model:
        def predict(self, *_args: object) -> list[int]:
            during.append((ch.drained_at[-1] if ch.drained_at else 0.0, time.monotonic()))
            return [0]

    sig = MethodSignature("predict", batchable=True)
    d = Dispatcher(Model(), [(sig, 8, 5.0)], WorkerStats("r", 0, ["predict"], 0, path=tmp_path / "stats"))
    d.channels = [ch]  # type: ignore[list-item]
    m = d.methods[0]
    for n in (1, 2, 1, 2):
        m.policy.on_batch_done(n, 50 * MS)
    estimate = m.policy.cost.estimate(1)
    assert estimate > 0
    d._assemble = lambda *_a: ((), {})  # type: ignore[method-assign]  # no arena here: the call has no tensors
    before = time.monotonic()
    d._run(m, [request(ch, 1, 0.0, now=before)], batched=True)  # type: ignore[arg-type]
    assert ch.written == [0]  # ST_OK
    published, inside = during[0]
    assert before + estimate <= published <= inside + estimate
    d.publish_backlog()  # the batch is over and nothing is queued: no backlog any more
    assert ch.drained_at[-1] == 0.0
