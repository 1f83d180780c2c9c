"""`Histogram`: observations are appended, then folded into the buckets when read."""
from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shmserve.http.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, PENDING_MAX, Histogram, Metrics


class Reference:
    """The histogram before observations were deferred: each one bisected and added at once."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


values = st.lists(st.one_of(st.floats(min_value=0.0, max_value=20.0), st.sampled_from(LATENCY_BUCKETS)), max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=5))
def test_reads_between_observations_give_what_observing_each_at_once_gave(rounds: list[list[float]]) -> None:
    h, ref = Histogram(LATENCY_BUCKETS), Reference(LATENCY_BUCKETS)
    for i, batch in enumerate(rounds):
        for v in batch:
            h.observe(v)
            ref.observe(v)
        if i % 2:  # a read folds what is pending; the next round adds on top
            assert h.snapshot() == [ref.counts, ref.sum]
    assert h.counts == ref.counts and h.sum == ref.sum and h.count == ref.count  # the sum to the bit
    assert h.pending == []
    assert h.buckets()[-1] == ("+Inf", ref.count)


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=200))
def test_integer_batch_sizes_and_copy_add(sizes: list[int]) -> None:
    h, ref = Histogram(BATCH_BUCKETS), Reference(BATCH_BUCKETS)
    for n in sizes:
        h.pending.append(n)  # what a hot caller does
        ref.observe(n)
    c = h.copy()
    assert (c.counts, c.sum, c.count) == (ref.counts, ref.sum, ref.count)
    c.add(h.snapshot())
    assert c.count == 2 * ref.count and c.counts == [2 * n for n in ref.counts]


def test_the_writer_folds_once_pending_reaches_the_bound() -> None:
    h = Histogram(LATENCY_BUCKETS)
    for _ in range(PENDING_MAX - 1):
        h.observe(0.001)
    assert len(h.pending) == PENDING_MAX - 1
    h.observe(0.001)
    assert h.pending == []
    assert h.count == PENDING_MAX


def test_runner_histograms_stay_bounded_when_nobody_reads() -> None:
    m = Metrics("svc")
    trace = {"batch_size": 4, "submit": 1.0, "model_start": 1.001, "model_end": 1.002, "complete": 1.003}
    for _ in range(3 * PENDING_MAX + 5):
        m.on_trace("r", "predict", trace)
    hs = m._runner[("r", "predict")]
    assert all(len(h.pending) <= PENDING_MAX for h in hs)
    assert [h.count for h in hs] == [3 * PENDING_MAX + 5] * 4


def test_a_reader_on_another_thread_loses_and_doubles_nothing() -> None:
    h = Histogram(LATENCY_BUCKETS)
    n = 20 * PENDING_MAX
    done, reading = threading.Event(), threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not done.is_set():
            seen.append(h.copy().count)
            h.snapshot()
            reading.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(n):
            if i == n // 2:  # half observed: let the reader fold some before the rest (no timing assumed)
                assert reading.wait(10.0)
            h.observe((i % 100) / 1000)
    finally:
        done.set()
        reader.join()
    ref = Reference(LATENCY_BUCKETS)
    for i in range(n):
        ref.observe((i % 100) / 1000)
    assert h.count == n and h.counts == ref.counts
    assert seen == sorted(seen) and seen[-1] <= n  # counts only grow, never past what was observed
    assert h.sum == ref.sum  # folded in batches, but still added one value at a time, in order


def test_observe_request_counts_and_folds_past_the_bound() -> None:
    m = Metrics("svc")
    for _ in range(PENDING_MAX + 3):
        m.observe_request("predict", 200, 0.002)
    m.observe_request("predict", 503, 0.5)
    h = m.request_histogram("predict", 200)
    assert len(h.pending) == 3 and h.count == PENDING_MAX + 3 and h.pending == []
    requests, _, _ = m.totals()
    assert {k: v.count for k, v in requests.items()} == {("predict", 200): PENDING_MAX + 3, ("predict", 503): 1}


class AppendsWhileCopied(list):  # type: ignore[type-arg]
    """A pending list whose writer appends just after a fold copied it: the race, made deterministic."""

    appended = False

    def __getitem__(self, index: Any) -> Any:
        out = super().__getitem__(index)
        if isinstance(index, slice) and not self.appended:
            self.appended = True
            self.append(7.0)
        return out


def test_a_value_appended_while_a_fold_copies_waits_for_the_next_fold() -> None:
    h = Histogram(LATENCY_BUCKETS)
    h.pending = AppendsWhileCopied([0.001])
    assert h.count == 1  # the fold took the copied value; the one appended after the copy stays pending
    assert h.pending == [7.0]
    assert h.snapshot()[1] == 0.001 + 7.0 and h.count == 2 and h.pending == []
