"""Discrete-event simulation of one runner worker under three batching policies.

Compares shmserve's adaptive :class:`~shmserve.batching.BatchPolicy` with

* ``fixed``: a fixed window that, once a call is queued, waits until the batch is full or
  ``max_latency`` has passed since the oldest call (what Mosec and LitServe do);
* ``greedy``: run whatever is queued as soon as the worker is idle.

The batch cost is ``a + b * n`` seconds (``a`` = 150 us, ``b`` = 5 us by default) with a little
log-normal noise. Closed-loop callers each send a call, wait for its result, and send the next one
after a short turnaround (``--turnaround-us`` plus an exponential jitter: result pickup and the
caller's own work); open-loop arrivals are Poisson. Prints throughput, p50/p99 latency (arrival to
result) and mean batch size per policy, side by side. No real time passes: the policy is driven
with the simulated clock, exactly as the dispatch loop drives it with ``time.monotonic()``.

    python perf/batching_sim.py [--duration 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shmserve.batching import BatchPolicy, Decision, fifo_prefix  # noqa: E402


class Policy(Protocol):
    def on_arrival(self, t: float, items: int) -> None: ...
    def on_batch_done(self, items: int, seconds: float, done_at: float | None = None) -> None: ...
    def decide(self, queue_items: list[int], oldest_arrival: float, last_arrival: float, now: float) -> Decision: ...


class GreedyPolicy:
    """Run whatever is queued whenever the worker is idle."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size

    def on_arrival(self, t: float, items: int) -> None:
        pass

    def on_batch_done(self, items: int, seconds: float, done_at: float | None = None) -> None:
        pass

    def decide(self, queue_items: list[int], oldest_arrival: float, last_arrival: float, now: float) -> Decision:
        calls, items = fifo_prefix(queue_items, self.max_batch_size)
        return Decision(calls > 0, items, now if calls else math.inf, calls)


class FixedWindowPolicy(GreedyPolicy):
    """Wait until the batch is full or max_latency has passed since the oldest queued call."""

    def __init__(self, max_batch_size: int, max_latency_s: float) -> None:
        super().__init__(max_batch_size)
        self.max_latency_s = max_latency_s

    def decide(self, queue_items: list[int], oldest_arrival: float, last_arrival: float, now: float) -> Decision:
        calls, items = fifo_prefix(queue_items, self.max_batch_size)
        if calls == 0:
            return Decision(False, 0, math.inf, 0)
        window_end = oldest_arrival + self.max_latency_s
        if items >= self.max_batch_size or calls < len(queue_items) or now >= window_end:
            return Decision(True, items, now, calls)
        return Decision(False, items, window_end, calls)


@dataclass
class Scenario:
    name: str
    closed_callers: int = 0  # > 0: closed loop with this many callers
    rate: float = 0.0  # > 0: Poisson open loop, calls per second


@dataclass
class Result:
    scenario: str
    policy: str
    throughput: float
    p50_us: float
    p99_us: float
    mean_batch: float
    batches: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)


def simulate(policy: Policy, sc: Scenario, args: argparse.Namespace, seed: int) -> Result:
    rng = random.Random(seed)
    a, b = args.a_us * 1e-6, args.b_us * 1e-6
    turnaround, jitter = args.turnaround_us * 1e-6, args.jitter_us * 1e-6
    horizon = args.duration
    warm = horizon * 0.1
    events: list[tuple[float, int, str, int]] = []
    seq = 0

    def push(t: float, kind: str, who: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, who))

    if sc.closed_callers:
        for c in range(sc.closed_callers):
            push(rng.uniform(0.0, 50e-6), "arrive", c)
    else:
        push(rng.expovariate(sc.rate), "arrive", -1)

    queue: deque[tuple[float, int, int]] = deque()  # (arrival time, items, caller)
    busy = False
    running: list[tuple[float, int]] = []
    latencies: list[float] = []
    batch_sizes: list[int] = []
    done_calls = 0
    pending_wake = math.inf
    batch_start = 0.0

    while events:
        now, _, kind, who = heapq.heappop(events)
        if now > horizon:
            break
        if kind == "arrive":
            queue.append((now, 1, who))
            policy.on_arrival(now, 1)
            if who < 0:
                push(now + rng.expovariate(sc.rate), "arrive", -1)
        elif kind == "done":
            busy = False
            policy.on_batch_done(sum(1 for _ in running), now - batch_start, now)
            for arrived, caller in running:
                if arrived >= warm:
                    latencies.append(now - arrived)
                    done_calls += 1
                if caller >= 0:
                    push(now + turnaround + rng.expovariate(1.0 / jitter), "arrive", caller)
            running = []
        elif kind == "wake":
            if now < pending_wake:
                continue  # superseded by a later decision
            pending_wake = math.inf
        if busy or not queue:
            continue
        d = policy.decide([q[1] for q in queue], queue[0][0], queue[-1][0], now)
        if d.run:
            n_items = 0
            for _ in range(d.calls):
                arrived, items, caller = queue.popleft()
                running.append((arrived, caller))
                n_items += items
            seconds = (a + b * n_items) * rng.lognormvariate(0.0, 0.05)
            if now >= warm:
                batch_sizes.append(n_items)
            busy = True
            batch_start = now
            pending_wake = math.inf
            push(now + seconds, "done")
        elif d.wait_until < math.inf:
            pending_wake = d.wait_until
            push(d.wait_until, "wake")

    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6 if latencies else math.nan

    return Result(
        scenario=sc.name,
        policy="",
        throughput=done_calls / (horizon - warm),
        p50_us=pct(0.50),
        p99_us=pct(0.99),
        mean_batch=sum(batch_sizes) / len(batch_sizes) if batch_sizes else math.nan,
        batches=len(batch_sizes),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=0.5, help="simulated seconds per run (default 0.5)")
    p.add_argument("--a-us", type=float, default=150.0, help="fixed cost of a batch, us")
    p.add_argument("--b-us", type=float, default=5.0, help="cost per item, us")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-latency-ms", type=float, default=10.0)
    p.add_argument("--turnaround-us", type=float, default=10.0, help="closed loop: fixed caller turnaround, us")
    p.add_argument("--jitter-us", type=float, default=10.0, help="closed loop: mean exponential jitter, us")
    p.add_argument("--callers", default="1,2,8,32,128", help="closed-loop caller counts")
    p.add_argument("--rates", default="1000,5000,10000,30000,60000,100000", help="Poisson rates, calls/s")
    p.add_argument("--wait-gaps", type=float, default=2.0, help="adaptive policy: k, gaps to wait past the last call")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = p.parse_args(argv)

    scenarios = [Scenario(f"closed {c:>3} callers", closed_callers=int(c)) for c in args.callers.split(",") if c]
    scenarios += [Scenario(f"poisson {float(r) / 1000:>5g}k/s", rate=float(r)) for r in args.rates.split(",") if r]
    max_lat = args.max_latency_ms / 1000.0
    makers: dict[str, Callable[[], Policy]] = {
        "adaptive": lambda: BatchPolicy(args.max_batch, max_lat, wait_gaps=args.wait_gaps),
        "fixed": lambda: FixedWindowPolicy(args.max_batch, max_lat),
        "greedy": lambda: GreedyPolicy(args.max_batch),
    }
    print(
        f"cost(n) = {args.a_us:g} us + {args.b_us:g} us * n, max_batch {args.max_batch}, "
        f"max_latency {args.max_latency_ms:g} ms, {args.duration:g} s simulated per run (first 10% dropped)"
    )
    head = f"{'scenario':<22}" + "".join(
        f" | {n + ' req/s':>15} {'p50us':>7} {'p99us':>7} {'batch':>5}" for n in makers
    )
    print(head)
    print("-" * len(head))
    results: list[Result] = []
    for i, sc in enumerate(scenarios):
        row = f"{sc.name:<22}"
        for name, make in makers.items():
            r = simulate(make(), sc, args, seed=args.seed * 1000 + i)
            r.policy = name
            results.append(r)
            row += f" | {r.throughput:>15,.0f} {r.p50_us:>7.0f} {r.p99_us:>7.0f} {r.mean_batch:>5.1f}"
        print(row, flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "results": [{k: v for k, v in vars(r).items() if k != "latencies"} for r in results],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
