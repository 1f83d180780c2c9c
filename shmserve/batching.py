"""Adaptive batching policy: when a runner worker runs a batch, and how much of its queue it takes.

The policy is pure. The dispatch loop in ``shmserve/worker/runner.py`` owns the queues, the clock
and the semaphores; it reports arrivals and finished batches and asks :meth:`BatchPolicy.decide`
what to do, passing the current monotonic time. Tests drive it with a fake clock.

The rule, for a worker that is idle with ``n`` items queued (items are counted along ``batch_dim``):

* run when the FIFO prefix that fits ``max_batch_size`` is full, or when a queued call does not fit
  behind it (the queue already holds more than one batch);
* run when waiting any longer would make the oldest call miss ``max_latency`` (the deadline counts
  the estimated run cost of the batch);
* run when nothing is known yet (no batch cost measured, no arrival rate): a lone caller never waits;
* otherwise wait for the next call only while it pays. Waiting ``g`` seconds for ``m`` more items
  raises the batch's throughput from ``n / cost(n)`` to ``(n + m) / (g + cost(n + m))``; with
  ``cost(n) = fixed + per_item * n`` that holds exactly when ``g < fixed * m / n``. So the policy
  waits while the expected gap to the next call is below ``fixed * m / n``, and at most until
  ``last_arrival + k * gap``: if the call it expects does not come by then, it runs;
* the same test admits waiting for the echo of a completion: closed-loop callers send their next
  call right after their result, so just after a batch of ``c`` items completes, up to ``c`` calls
  are on their way although none has arrived yet. When the loop reports completion times
  (``on_batch_done(..., done_at=)``) the policy learns how many come back and how soon, and waits
  for the ones still expected, at most until ``last_done + echo_span``.

At low load the gap is long and batches run at once; in a closed-loop burst the policy collects the
burst, then runs; under open-loop (Poisson) load a completion brings no echo and batches grow while
the worker is busy, as in greedy batching. ``perf/batching_sim.py`` compares it with a fixed window
and with greedy batching.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import NamedTuple

__all__ = ["ArrivalModel", "BatchPolicy", "CostModel", "Decision", "fifo_prefix"]


class Decision(NamedTuple):
    """What the dispatch loop should do now.

    ``run``: run a batch now. ``items``: items (along ``batch_dim``) in the FIFO prefix the batch
    takes, or would take. ``calls``: how many queued calls that prefix spans. ``wait_until``: when
    not running, the monotonic time at which to decide again at the latest (the loop also decides
    again on every arrival); ``math.inf`` when the queue is empty.
    """

    run: bool
    items: int
    wait_until: float
    calls: int = 0


def fifo_prefix(queue_items: list[int], max_batch_size: int) -> tuple[int, int]:
    """Return ``(calls, items)`` of the longest FIFO prefix of calls whose items fit ``max_batch_size``.

    A call is never split. A first call larger than ``max_batch_size`` forms a batch alone.
    """
    if not queue_items:
        return 0, 0
    first = queue_items[0]
    if first >= max_batch_size:
        return 1, first
    calls, items = 1, first
    for n in queue_items[1:]:
        if items + n > max_batch_size:
            break
        calls += 1
        items += n
    return calls, items


class CostModel:
    """Online estimate of the run time of a batch: ``cost(n) = fixed + per_item * n`` seconds.

    Exponentially decayed least squares over (items, seconds) observations, so the fit follows a
    model whose speed drifts. When the observed sizes barely vary (every batch had one item, say)
    fixed and per-item cost cannot be told apart; the model then assumes the cost is all per-item
    (``fixed = 0``), which makes the policy greedy rather than have it wait on a guess.
    After ``warmup`` observations an observation above ``outlier_factor`` times the estimate (a GC
    pause, a page fault storm) is clipped to it so one stall does not make the policy wait for long.
    """

    def __init__(self, decay: float = 0.98, outlier_factor: float = 4.0, warmup: int = 8) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"CostModel decay must be in (0, 1], got {decay}")
        self._decay = decay
        self._outlier_factor = outlier_factor
        self._warmup = warmup
        self._count = 0
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._fixed = 0.0
        self._per_item = 0.0

    @property
    def known(self) -> bool:
        """True once at least one batch has been measured."""
        return self._count > 0

    @property
    def fixed(self) -> float:
        """Estimated cost of a batch independent of its size, in seconds (0 until known)."""
        return self._fixed

    @property
    def per_item(self) -> float:
        """Estimated extra cost of one more item in a batch, in seconds (0 until known)."""
        return self._per_item

    def estimate(self, items: int) -> float:
        """Estimated run time of a batch of ``items`` items, in seconds (0 until known)."""
        return self._fixed + self._per_item * items

    def observe(self, items: int, seconds: float) -> None:
        """Record that a batch of ``items`` items ran in ``seconds``."""
        if items <= 0:
            raise ValueError(f"a batch has at least one item, got items={items}")
        if not (seconds >= 0.0 and math.isfinite(seconds)):
            raise ValueError(f"batch run time must be a finite number of seconds >= 0, got {seconds}")
        if self._count >= self._warmup:
            seconds = min(seconds, self._outlier_factor * self.estimate(items))
        d = self._decay
        x = float(items)
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + x
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + x * x
        self._sxy = self._sxy * d + x * seconds
        self._count += 1
        self._solve()

    def _solve(self) -> None:
        mean_x = self._sx / self._w
        mean_y = self._sy / self._w
        var_x = self._sxx / self._w - mean_x * mean_x
        # Below a tenth of an item squared the sizes are effectively one size: slope is noise.
        if var_x < 0.1:
            self._fixed, self._per_item = mean_y, 0.0
            return
        per_item = (self._sxy / self._w - mean_x * mean_y) / var_x
        fixed = mean_y - per_item * mean_x
        if per_item < 0.0:
            fixed, per_item = mean_y, 0.0
        elif fixed < 0.0:
            fixed, per_item = 0.0, self._sxy / self._sxx
        self._fixed, self._per_item = fixed, per_item


class ArrivalModel:
    """Online estimate of when the next calls arrive.

    ``expected_gap``: the typical gap between consecutive calls, from a quantile (the median by
    default) of the last ``window`` gaps rather than their mean: closed-loop callers arrive in
    bursts, and what matters is the gap inside a burst, which the one long gap between bursts would
    swamp in a mean. The median is divided by ln 2 so that for Poisson arrivals it equals the mean
    gap; inside a burst it stays a burst gap.

    The echo of a completion: closed-loop callers send their next call right after their result
    arrives, so a completed batch of ``c`` items is followed shortly by up to ``c`` new calls.
    ``echo_span`` is the 90th percentile of the delay from the latest completion to each arrival,
    and ``echo_ratio`` the fraction of a completed batch's items that come back within that span,
    net of the calls the average arrival rate would bring anyway (so Poisson load shows none).

    After a quiet spell the windows still hold short gaps; the policy then waits at most a couple
    of such short gaps for nothing, which bounds the harm.
    """

    def __init__(self, window: int = 32, quantile: float = 0.5, min_gaps: int = 4) -> None:
        if window < 1 or not 0.0 < quantile < 1.0:
            raise ValueError(f"ArrivalModel needs window >= 1 and quantile in (0, 1), got {window}, {quantile}")
        self._gaps = _WindowQuantile(window, quantile)
        self._echo_lags = _WindowQuantile(256, 0.9)
        self._scale = -1.0 / math.log1p(-quantile)
        self._min_gaps = max(1, min_gaps)
        self._last: float | None = None
        self._mean_gap = math.inf
        self._last_done: float | None = None
        self._done_items = 0
        self._since_done = 0
        self._echo_count = 0
        self._echo_ratio = 0.0
        self._echo_window = 0.0

    def observe(self, t: float) -> None:
        """Record a call arriving at monotonic time ``t``."""
        if self._last is not None:
            gap = max(0.0, t - self._last)
            self._gaps.add(gap)
            self._mean_gap = gap if math.isinf(self._mean_gap) else self._mean_gap + 0.05 * (gap - self._mean_gap)
        self._last = t if self._last is None else max(self._last, t)
        if self._last_done is not None:
            lag = max(0.0, t - self._last_done)
            self._echo_lags.add(lag)
            self._since_done += 1
            if lag <= self._echo_window:
                self._echo_count += 1

    def observe_many(self, ts: list[float]) -> None:
        """`observe` for each of ``ts`` in order, in one call: the state it leaves is the loop's.

        The dispatch loop reads a channel's new calls at once and no decision reads this model
        between two of them, so it records them together; a window that takes more values than
        it holds is sorted once instead of once per value."""
        if not ts:
            return
        last = self._last
        gaps: list[float] = []
        mean = self._mean_gap
        for t in ts:
            if last is not None:
                gap = t - last
                if not gap > 0.0:  # max(0.0, gap), as observe
                    gap = 0.0
                gaps.append(gap)
                mean = gap if mean == math.inf else mean + 0.05 * (gap - mean)
                if t > last:
                    last = t
            else:
                last = t
        self._last = last
        self._mean_gap = mean
        self._gaps.extend(gaps)
        done = self._last_done
        if done is not None:
            lags = [t - done if t > done else 0.0 for t in ts]
            self._echo_lags.extend(lags)
            self._since_done += len(lags)
            window = self._echo_window
            self._echo_count += sum(1 for lag in lags if lag <= window)

    def observe_completion(self, t: float, items: int) -> None:
        """Record that a batch of ``items`` items completed at monotonic time ``t``."""
        if self._last_done is not None and self._done_items > 0:
            # Subtract the calls the window would catch at the average rate anyway: under open-loop
            # (Poisson) load a completion brings nothing extra, and waiting for it would not pay.
            baseline = self._echo_window / self._mean_gap if self._mean_gap > 0.0 else 0.0
            ratio = min(1.0, max(0.0, (self._echo_count - baseline) / self._done_items))
            self._echo_ratio += 0.2 * (ratio - self._echo_ratio)
        self._last_done = t
        self._done_items = items
        self._since_done = 0
        self._echo_count = 0
        span = self.echo_span
        self._echo_window = span if math.isfinite(span) else 0.0

    @property
    def expected_gap(self) -> float:
        """Typical gap between calls in seconds; ``math.inf`` until ``min_gaps`` gaps were seen."""
        if len(self._gaps) < self._min_gaps:
            return math.inf
        return self._gaps.value() * self._scale

    @property
    def echo_span(self) -> float:
        """Delay after a completion within which 90% of calls arrive, seconds; ``math.inf`` until known."""
        if len(self._echo_lags) < self._min_gaps:
            return math.inf
        return self._echo_lags.value()

    @property
    def echo_ratio(self) -> float:
        """Estimated fraction of a completed batch's items that come back as new calls within ``echo_span``.

        An EWMA over completions of (calls within the span, less those the average rate would bring
        in that time) per completed item.
        """
        return self._echo_ratio

    @property
    def last_done(self) -> float | None:
        """Monotonic time of the last completion, or None."""
        return self._last_done

    @property
    def echo_remaining(self) -> float:
        """Calls still expected back from the last completion (0 when none is known)."""
        return max(0.0, self._echo_ratio * self._done_items - self._since_done)


class _WindowQuantile:
    """A quantile over the last ``size`` values, kept as a sorted list (the windows are small).

    The quantile is cached between additions: the dispatch loop reads it several
    times per call, and it changes only when a value is added.
    """

    def __init__(self, size: int, quantile: float) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._quantile = quantile
        self._cached: float | None = None

    def __len__(self) -> int:
        return len(self._values)

    def add(self, v: float) -> None:
        if len(self._values) == self._values.maxlen:
            del self._sorted[bisect.bisect_left(self._sorted, self._values[0])]
        self._values.append(v)
        bisect.insort(self._sorted, v)
        self._cached = None

    def extend(self, vs: list[float]) -> None:
        """`add` for each of `vs` in order: the same window, sorted once when that is cheaper."""
        values = self._values
        if len(vs) <= 4:
            for v in vs:
                self.add(v)
            return
        values.extend(vs)
        self._sorted = sorted(values)
        self._cached = None

    def value(self) -> float:
        cached = self._cached
        if cached is None:
            n = len(self._sorted)
            cached = self._cached = self._sorted[min(n - 1, int(self._quantile * n))]
        return cached


class BatchPolicy:
    """Decides, for one batch key's FIFO queue, whether to run a batch now or wait for more calls.

    ``max_latency_s`` bounds how long batching may hold a call back: a call is never held past the
    point where the batch, run at its estimated cost, would complete later than ``max_latency_s``
    after the call arrived. It is not a timeout (calls are not failed because of it).
    ``wait_gaps`` is ``k``: how many expected gaps after the last arrival the policy waits for the
    next call before giving up and running.
    """

    def __init__(
        self,
        max_batch_size: int,
        max_latency_s: float,
        cost: CostModel | None = None,
        arrivals: ArrivalModel | None = None,
        wait_gaps: float = 2.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_latency_s < 0.0:
            raise ValueError(f"max_latency_ms must be >= 0, got {max_latency_s * 1000.0} ms")
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self.cost = cost if cost is not None else CostModel()
        self.arrivals = arrivals if arrivals is not None else ArrivalModel()
        self.wait_gaps = wait_gaps
        self._items_per_call = 1.0
        self._calls_seen = 0

    @property
    def items_per_call(self) -> float:
        """Running mean of items per call (an EWMA over recent calls)."""
        return self._items_per_call

    def on_arrival(self, t: float, items: int) -> None:
        """Record a call of ``items`` items arriving at monotonic time ``t``."""
        self.arrivals.observe(t)
        self._calls_seen += 1
        alpha = max(0.05, 1.0 / self._calls_seen)
        self._items_per_call += alpha * (max(1, items) - self._items_per_call)

    def on_arrivals(self, ts: list[float], items: list[int]) -> None:
        """`on_arrival` for each (ts[i], items[i]) in order, in one call (the same state after)."""
        self.arrivals.observe_many(ts)
        seen, m = self._calls_seen, self._items_per_call
        for n in items:
            seen += 1
            alpha = 1.0 / seen
            if alpha < 0.05:
                alpha = 0.05
            m += alpha * ((n if n > 1 else 1) - m)
        self._calls_seen, self._items_per_call = seen, m

    def on_batch_done(self, items: int, seconds: float, done_at: float | None = None) -> None:
        """Record that a batch of ``items`` items took ``seconds`` to run (the model call only).

        Pass ``done_at``, the monotonic time the results were handed back: it lets the policy learn
        that closed-loop callers answer a completion with new calls, and wait for them. A batch of no
        items (calls of zero rows a method declared it accepts) teaches nothing and is ignored.
        """
        if items <= 0:
            return
        self.cost.observe(items, seconds)
        if done_at is not None:
            self.arrivals.observe_completion(done_at, items)

    def expected_wait(self, items_ahead: int, items: int) -> float:
        """Seconds until a call of ``items`` items, queued behind ``items_ahead``, would be served.

        The queue is assumed to run in full batches at the cost model's estimate, which is how a
        backlog drains; 0 while no batch has been measured (nothing is refused on a guess). The
        dispatch loop refuses a call whose deadline comes sooner (admission by time): under
        overload it is told at once to retry, instead of waiting out its deadline in the queue.
        """
        if not self.cost.known:
            return 0.0
        full, rest = divmod(max(0, items_ahead) + max(0, items), self.max_batch_size)
        return full * self.cost.estimate(self.max_batch_size) + (self.cost.estimate(rest) if rest else 0.0)

    def decide(self, queue_items: list[int], oldest_arrival: float, last_arrival: float, now: float) -> Decision:
        """Decide for an idle worker whose queue holds calls of ``queue_items`` items, oldest first.

        ``oldest_arrival`` and ``last_arrival`` are the arrival times of the first and the last
        queued call; ``now`` is the current monotonic time.
        """
        calls, items = fifo_prefix(queue_items, self.max_batch_size)
        if calls == 0:
            return Decision(False, 0, math.inf, 0)
        run_now = Decision(True, items, now, calls)
        if items >= self.max_batch_size or calls < len(queue_items) or items == 0:
            return run_now  # full, or more than one batch queued, or nothing to weigh waiting against
        if not self.cost.known:
            return run_now
        room = self.max_batch_size - items
        m = self._items_per_call
        if m > room:
            return run_now
        # Latest start that still lets a batch grown by one more typical call finish in time.
        deadline = oldest_arrival + self.max_latency_s - self.cost.estimate(items + math.ceil(m))
        if now >= deadline:
            return run_now
        # Waiting w seconds for m more items pays (in batch throughput) iff w < fixed * m / items.
        budget = self.cost.fixed / items
        wait_until = -math.inf
        gap = self.arrivals.expected_gap
        if gap < budget * m:
            wait_until = last_arrival + self.wait_gaps * gap
        arr = self.arrivals
        if arr.last_done is not None:
            expected = min(float(room), arr.echo_remaining)
            echo_end = arr.last_done + arr.echo_span
            if expected >= 0.5 and echo_end - now < budget * expected:
                wait_until = max(wait_until, echo_end)
        wait_until = min(wait_until, deadline)
        if wait_until <= now:
            return run_now
        return Decision(False, items, wait_until, calls)
