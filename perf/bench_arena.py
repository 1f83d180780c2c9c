"""The default arena, old (32 MiB) against new (16 MiB), side by side in one run.

    python -m perf.bench_arena            # about a minute on 2 cores
    python -m perf.bench_arena --quick

Two echo runners differing only in ``arena_mb`` run at once; every pass
measures both, back to back, so the ratios (new / old) compare like with like
on a noisy machine. Figures:

* ``attach_ms``: ``shmserve.connect()`` to a running runner: the client
  creates, reserves (``posix_fallocate``) and pre-faults its channel, the
  worker maps and pre-faults it;
* ``rtt_<size>_us``: sequential ``run()`` round trips, p50 and p99;
* ``async<N>_600KB``: N asyncio callers of 600 KB tensors at once: calls/s and
  how many were refused with ``RunnerOverloaded`` because the request arena
  was full (an event loop never waits for arena space).
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np

from .calibration import make_tensor
from .stats import median, percentiles

OLD_MB, NEW_MB = 32, 16


def _rtt(method: Any, x: np.ndarray, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        method.run(x)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def _burst(method: Any, x: np.ndarray, callers: int, rounds: int) -> tuple[float, int]:
    from shmserve.errors import RunnerOverloaded

    refused = 0

    async def one() -> None:
        nonlocal refused
        for _ in range(rounds):
            try:
                await method.async_run(x)
            except RunnerOverloaded:
                refused += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(callers)))
    return callers * rounds / (time.perf_counter() - t0), refused


def main() -> None:
    import shmserve

    from .runnables import EchoRunnable

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    passes, calls, rounds = (2, 200, 5) if args.quick else (4, 500, 10)
    runners = {mb: shmserve.Runner(EchoRunnable, name=f"perf_arena_{mb}", workers=1, arena_mb=mb,
                                   max_batch_size=1, max_latency_ms=0) for mb in (OLD_MB, NEW_MB)}
    figures: dict[str, dict[int, list[float]]] = {}

    def keep(key: str, mb: int, values: list[float]) -> None:
        figures.setdefault(key, {}).setdefault(mb, []).extend(values)

    sizes = {"3KB": make_tensor("3KB"), "600KB": make_tensor("600KB"), "8MB": np.ones(2 * 2**20, np.float32)}
    with shmserve.start(*runners.values()):
        for r in runners.values():  # warm up: first calls fault in the result path
            for x in sizes.values():
                r.echo.run(x)
        for _ in range(passes):
            for mb, r in runners.items():
                t0 = time.perf_counter()
                with shmserve.connect(r.name):
                    keep("attach_ms", mb, [(time.perf_counter() - t0) * 1e3])
                for size, x in sizes.items():
                    keep(f"rtt_{size}_us", mb, _rtt(r.echo, x, calls // (10 if size == "8MB" else 1)))
                for callers in (16, 64):
                    rate, refused = asyncio.run(_burst(r.echo, sizes["600KB"], callers, rounds))
                    keep(f"async{callers}_600KB_calls_per_s", mb, [rate])
                    keep(f"async{callers}_600KB_refused_of_{callers * rounds}", mb, [float(refused)])
    print(f"arena_mb {NEW_MB} (new default) against {OLD_MB} (old), {passes} passes, interleaved; "
          "the machine is shared and noisy: read the ratios, not the absolute figures")
    print(f"{'figure':40} {'old p50':>10} {'old p99':>10} {'new p50':>10} {'new p99':>10} {'new/old p50':>12}")
    for key, by_mb in figures.items():
        old, new = by_mb[OLD_MB], by_mb[NEW_MB]
        if key.startswith("rtt"):
            po, pn = percentiles(old, (50, 99)), percentiles(new, (50, 99))
            o50, o99, n50, n99 = po["p50"], po["p99"], pn["p50"], pn["p99"]
        else:
            o50, n50 = median(old), median(new)
            o99 = n99 = float("nan")
        ratio = n50 / o50 if o50 else float("nan")
        print(f"{key:40} {o50:10.1f} {o99:10.1f} {n50:10.1f} {n99:10.1f} {ratio:12.2f}")


if __name__ == "__main__":
    main()
