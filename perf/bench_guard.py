"""What the event-loop guard of ``runner.<method>.run()`` costs, side by side in one run.

    python -m perf.bench_guard            # a few seconds

A runner is bound to a backend that answers at once (no processes), so the
figures are the Python cost above the transport. Interleaved rounds time
``runner.predict.run(x)`` (which asks `asyncio._get_running_loop()` before it
waits, raising `BlockingCall` inside a running loop) against what ``run()``
did before the guard (the same backend call, unchecked), and print per-call
medians, p99 of the rounds, and the difference. A real round trip costs tens of microseconds (``perf.bench_transport``).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import shmserve

from .stats import median, percentiles


class _Echo(shmserve.Runnable):
    @shmserve.Runnable.method(batchable=True)
    def predict(self, x: Any) -> Any:
        return x


class _AtOnce:
    """A backend that answers at once: what is left is the cost above the transport."""

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        return args[0]

    async def async_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                         timeout: float | None) -> Any:
        return args[0]

    def close(self) -> None:
        pass


def _per_call_ns(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    runner = shmserve.Runner(_Echo, name="bench_guard")
    runner._bind(_AtOnce())
    x = np.ones((1, 784), np.float32)
    method = runner.predict
    run = method.run

    def run_before(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """`RunnerMethod.run` without its event-loop check (`_not_blocking`)."""
        method._not_streaming()
        timeout = method.runner.timeout if timeout is None else timeout
        backend = method.runner._backend_or_raise()
        args, kwargs = method._args(args, kwargs)
        return backend.call(method.name, args, kwargs, timeout)

    def guarded() -> Any:
        return run(x)

    def unguarded() -> Any:
        return run_before(x)

    rounds: dict[str, list[float]] = {"run": [], "unguarded": []}
    for _ in range(args.rounds):
        rounds["run"].append(_per_call_ns(guarded, args.calls))
        rounds["unguarded"].append(_per_call_ns(unguarded, args.calls))
    diffs = [a - b for a, b in zip(rounds["run"], rounds["unguarded"], strict=True)]
    for name, values in (*rounds.items(), ("the guard", diffs)):
        p = percentiles(values)
        print(f"{name:>14}: median {median(values):8.0f} ns/call, p99 of rounds {p['p99']:8.0f} ns")


if __name__ == "__main__":
    main()
