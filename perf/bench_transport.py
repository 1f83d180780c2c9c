"""Transport round trips: `runner.echo.run(x)` through shared memory, beside its calibration.

Each pass measures, back to back: the bare semaphore ping-pong, memcpy at each
size, `multiprocessing.Pipe` + pickle round trips and shmserve round trips, so
the ratios between them are side by side even on a busy machine.

Waiters poll briefly before they sleep (`shmserve.shm.signal.Spinner`). A
second echo runner started with ``SHMSERVE_SPIN_US=0`` only sleeps; the
small sizes are measured on both, with the CPU time both processes spend per
call, so what the polling buys and what it costs sit side by side.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import calibration as cal
from .pinning import cpu_pairs, pinned
from .procs import cpu_seconds
from .results import Figure, ResultSet
from .stats import median, percentiles

ECHO_ARENA_MB = 320  # a 128 MB tensor in and out, with room for the allocator's wrap-around


SLEEP_SIZES = ("3KB", "600KB")  # sizes also measured on the runner whose waits only sleep


def _shm_round_trips(method: Any, size: str, budget_s: float, cpu_pids: list[int] | None = None) -> dict[str, float]:
    x = cal.make_tensor(size)

    def call() -> None:
        y = method.run(x)
        del y  # a leased result goes back to the arena here, inside the timed call

    big = cal.nbytes(size) > 64 * 2**20
    warmup = 1 if big else 5
    cpu0 = _cpu_s(cpu_pids) if cpu_pids else 0.0
    times = cal.timed_loop(call, budget_s, min_n=3 if big else 10, warmup=warmup)
    out = percentiles(times * 1e6)
    if cpu_pids:
        out["cpu_us"] = (_cpu_s(cpu_pids) - cpu0) / (len(times) + warmup) * 1e6
    gc.collect()
    return out


def _cpu_s(worker_pids: list[int]) -> float:
    """CPU seconds used so far by this process and by the given workers (all threads of each)."""
    return cpu_seconds(0) + sum(cpu_seconds(pid) for pid in worker_pids)


@contextlib.contextmanager
def _spin_off() -> Iterator[None]:
    """Runners started (and clients made) inside this block never poll: their waits only sleep."""
    old = os.environ.get("SHMSERVE_SPIN_US")
    os.environ["SHMSERVE_SPIN_US"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SHMSERVE_SPIN_US", None)
        else:
            os.environ["SHMSERVE_SPIN_US"] = old


def verify_echo(method: Any) -> None:
    """Check the echo path returns what it was given (the correctness part of --check)."""
    for size in ("3KB", "600KB"):
        x = cal.make_tensor(size)
        y = np.asarray(method.run(x))
        if y.shape != x.shape or y.dtype != x.dtype or not np.array_equal(y, x):
            raise AssertionError(f"echo of a {size} tensor came back different: {y.shape} {y.dtype}")


def run(rs: ResultSet, passes: int, budget_s: float, sizes: tuple[str, ...], pingpong_rounds: int,
        check_only: bool = False) -> None:
    """Measure transport figures into `rs` (needs the shared-memory core)."""
    import shmserve

    from .runnables import EchoRunnable

    runner = shmserve.Runner(EchoRunnable, name="perf_echo", workers=1, arena_mb=ECHO_ARENA_MB,
                             max_batch_size=1, max_latency_ms=0)
    sleeper = shmserve.Runner(EchoRunnable, name="perf_echo_sleep", workers=1, arena_mb=16,
                              max_batch_size=1, max_latency_ms=0)
    raw: dict[str, list[dict[str, float]]] = {}
    pairs = cpu_pairs()

    def keep(key: str, value: dict[str, float]) -> None:
        raw.setdefault(key, []).append(value)

    with shmserve.start(runner), cal.PipeEcho() as pipe:
        with _spin_off():
            sleeping = shmserve.start(sleeper)
        with sleeping:
            verify_echo(runner.echo)
            verify_echo(sleeper.echo)
            if check_only:
                return
            _measure(runner, sleeper, pipe, keep, passes, budget_s, sizes, pingpong_rounds, pairs)
    _record(rs, raw, sizes, tuple(pairs))


def _measure(runner: Any, sleeper: Any, pipe: Any, keep: Any, passes: int, budget_s: float,
             sizes: tuple[str, ...], pingpong_rounds: int, pairs: dict[str, tuple[int, int]]) -> None:
    """Every pass of the transport section: calibrations and shmserve, back to back."""
    workers = _worker_pids()
    echo_pids = runner._backend_or_raise().worker_pids()
    sleep_pids = sleeper._backend_or_raise().worker_pids()
    # One unrecorded round of every size first: glibc raises its mmap threshold once a large
    # block is freed, after which mid-sized pickles stop page-faulting. Measure that steady
    # state, not whichever pass happened to run before it.
    for size in sizes:
        x = cal.make_tensor(size)
        for _ in range(2):
            pipe.round_trip(x)
            y = runner.echo.run(x)
            del y
        del x
    for _ in range(passes):
        keep("pingpong", cal.semaphore_pingpong(pingpong_rounds))
        for tag, cpus in pairs.items():
            keep(f"pingpong_{tag}", cal.semaphore_pingpong(pingpong_rounds, cpus))
        for size in sizes:
            keep(f"memcpy_{size}", cal.memcpy_time(size, budget_s / 2))
            keep(f"two_copies_{size}", cal.two_copies_time(size, budget_s / 2))
            keep(f"pipe_{size}", cal.pipe_round_trips(pipe, size, budget_s))
            keep(f"shm_{size}", _shm_round_trips(runner.echo, size, budget_s, echo_pids))
            if size in SLEEP_SIZES:
                keep(f"shm_sleep_{size}", _shm_round_trips(sleeper.echo, size, budget_s, sleep_pids))
            for tag, cpus in pairs.items():
                with pinned(cpus, workers):
                    keep(f"shm_{tag}_{size}", _shm_round_trips(runner.echo, size, budget_s / 2))


def _worker_pids() -> list[int]:
    from .procs import descendants

    # every child of ours: the runner worker(s), and the idle pipe-echo child, which does not matter
    return descendants(os.getpid())


def _fig(raw: dict[str, list[dict[str, float]]], key: str, name: str, calib: str | None = None,
         unit: str = "us") -> Figure:
    p50s = [r["p50"] for r in raw[key]]
    p99s = [r["p99"] for r in raw[key]]
    return Figure.from_passes(name, p50s, unit, "lower", calibration=calib, p99=median(p99s),
                              detail={"p99_passes": p99s})


def _record(rs: ResultSet, raw: dict[str, list[dict[str, float]]], sizes: tuple[str, ...],
            pinnings: tuple[str, ...] = ()) -> None:
    rs.add_calibration(_fig(raw, "pingpong", "calib.pingpong_us"))
    for tag in pinnings:
        rs.add_calibration(_fig(raw, f"pingpong_{tag}", f"calib.pingpong_{tag}_us"))
    curve = []
    for size in sizes:
        rs.add_calibration(_fig(raw, f"memcpy_{size}", f"calib.memcpy_{size}_us"))
        rs.add_calibration(_fig(raw, f"pipe_{size}", f"calib.pipe_pickle_rtt_{size}_us"))
        calib = "calib.pingpong_us" if size == "3KB" else f"calib.memcpy_{size}_us"
        shm = rs.add(_fig(raw, f"shm_{size}", f"transport.rtt_{size}_us", calib))
        for tag in pinnings:
            rs.add(_fig(raw, f"shm_{tag}_{size}", f"transport.rtt_{tag}_{size}_us",
                        f"calib.pingpong_{tag}_us" if size == "3KB" else f"calib.memcpy_{size}_us"))
        copies = rs.add_calibration(_fig(raw, f"two_copies_{size}", f"calib.two_copies_{size}_us"))
        rs.add(Figure.from_passes(f"transport.rtt_over_two_copies_{size}",
                                  [s / c for s, c in zip(shm.passes, copies.passes, strict=True)], "x", "lower"))
        pipe = rs.calibration[f"calib.pipe_pickle_rtt_{size}_us"]
        speedups = [p / s for p, s in zip(pipe.passes, shm.passes, strict=True)]
        target = {"600KB": 5.0, "16MB": 10.0}.get(size)
        fig = Figure.from_passes(f"issue2.pipe_over_shm_{size}", speedups, "x", "higher",
                                 target=f">= {target:g}x (issues 2 and 13)" if target else None)
        if target:
            fig.target_met = fig.value >= target
        rs.add(fig)
        curve.append({"size": size, "bytes": cal.nbytes(size), "shm_p50_us": shm.value, "shm_p99_us": shm.p99,
                      "pipe_p50_us": pipe.value, "pipe_p99_us": pipe.p99,
                      "memcpy_p50_us": rs.calibration[f"calib.memcpy_{size}_us"].value})
    for size in SLEEP_SIZES:
        if f"shm_sleep_{size}" not in raw:
            continue
        calib = "calib.pingpong_us" if size == "3KB" else f"calib.memcpy_{size}_us"
        sleeping = rs.add(_fig(raw, f"shm_sleep_{size}", f"transport.rtt_sleeping_{size}_us", calib))
        polling = rs.figures[f"transport.rtt_{size}_us"]
        rs.add(Figure.from_passes(f"transport.sleeping_over_polling_{size}",
                                  [s / p for s, p in zip(sleeping.passes, polling.passes, strict=True)], "x", "higher"))
        for key, tag in ((f"shm_{size}", "polling"), (f"shm_sleep_{size}", "sleeping")):
            cpu = [r["cpu_us"] for r in raw[key] if "cpu_us" in r]
            if cpu:  # client + worker CPU time per call, all threads
                rs.add(Figure.from_passes(f"transport.cpu_per_call_{tag}_{size}_us", cpu, "us", "lower"))
    if "3KB" in sizes:
        ping = rs.calibration["calib.pingpong_us"]
        shm = rs.figures["transport.rtt_3KB_us"]
        ratios = [s / p for s, p in zip(shm.passes, ping.passes, strict=True)]
        fig = Figure.from_passes("issue2.rtt_3KB_over_pingpong", ratios, "x", "lower",
                                 target="<= 3x the bare ping-pong (issue 2)")
        fig.target_met = fig.value <= 3.0
        rs.add(fig)
        for tag in pinnings:
            pinned_rtt = rs.figures[f"transport.rtt_{tag}_3KB_us"]
            pinned_ping = rs.calibration[f"calib.pingpong_{tag}_us"]
            ratios = [s / p for s, p in zip(pinned_rtt.passes, pinned_ping.passes, strict=True)]
            fig = Figure.from_passes(f"issue2.rtt_3KB_over_pingpong_{tag}", ratios,
                                     "x", "lower", target=f"<= 3x, both sides pinned {tag} (issue 2)")
            fig.target_met = fig.value <= 3.0
            rs.add(fig)
            if tag == "samecore":  # issue 13: both processes on one CPU, at most 4x the ping-pong there
                fig = Figure.from_passes("issue13.rtt_3KB_over_pingpong_samecore", ratios, "x", "lower",
                                         target="<= 4x, both sides pinned to one CPU (issue 13)")
                fig.target_met = fig.value <= 4.0
                rs.add(fig)
    rs.extras["transport_curve"] = curve
    rs.extras["transport_measured_at"] = time.time()
