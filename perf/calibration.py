"""Calibration figures, measured in the same run as shmserve's.

- a bare two-process POSIX semaphore ping-pong (posix_ipc): the floor of any
  cross-process wake-up on this machine;
- memcpy (numpy copy) time at each tensor size and bandwidth;
- `multiprocessing.Pipe` + pickle round trips at the transport's sizes: the
  naive way to move a tensor between processes;
- the MLP called in-process (no transport): how fast this CPU computes it;
- interpreter start-up and the memory of an idle `python -c "import numpy"`.

The trivial uvloop + httptools server is in trivial_server.py and is loaded
by the HTTP section.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _children
from .env import child_env
from .procs import memory_of
from .stats import percentiles

# name -> shape of a float32 tensor; bytes: 3,136 / 602,112 / 16,777,216 / 134,217,728
SIZES: dict[str, tuple[int, ...]] = {
    "3KB": (1, 784),
    "600KB": (1, 3, 224, 224),
    "16MB": (4096, 1024),
    "128MB": (32768, 1024),
}


def nbytes(size: str) -> int:
    """Bytes of the float32 tensor called `size`."""
    return int(np.prod(SIZES[size])) * 4


def make_tensor(size: str) -> np.ndarray:
    """A float32 tensor of the named size, filled (so its pages are touched)."""
    return np.random.default_rng(0).standard_normal(SIZES[size], dtype=np.float32)


def timed_loop(fn: Callable[[], object], budget_s: float, min_n: int = 5, max_n: int = 100_000,
               warmup: int = 3) -> np.ndarray:
    """Call `fn` repeatedly for about `budget_s`; return each call's seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    clock = time.perf_counter
    end = clock() + budget_s
    while len(times) < max_n and (len(times) < min_n or clock() < end):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return np.asarray(times)


def semaphore_pingpong(rounds: int = 20_000, cpus: tuple[int, int] | None = None) -> dict[str, float]:
    """Round-trip µs of a bare two-process POSIX semaphore ping-pong; `cpus` pins (this side, other side)."""
    import posix_ipc

    from .pinning import pinned

    tag = secrets.token_hex(6)
    ping = posix_ipc.Semaphore(f"/perfcal_{tag}_a", posix_ipc.O_CREX, 0o600, 0)
    pong = posix_ipc.Semaphore(f"/perfcal_{tag}_b", posix_ipc.O_CREX, 0o600, 0)
    warm = 200
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_children.semaphore_echo, args=(ping.name, pong.name, rounds + warm), daemon=True)
    try:
        child.start()
        assert child.pid is not None
        out = np.empty(rounds, dtype=np.int64)
        with pinned(cpus, [child.pid]):
            _pingpong_rounds(ping, pong, rounds, warm, out)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        for sem in (ping, pong):
            sem.unlink()
            sem.close()
    return percentiles(out / 1e3)


def _pingpong_rounds(ping: Any, pong: Any, rounds: int, warm: int, out: np.ndarray) -> None:
    clock = time.perf_counter_ns
    for _ in range(warm):
        ping.release()
        pong.acquire(10.0)
    for i in range(rounds):
        t0 = clock()
        ping.release()
        pong.acquire(5.0)
        out[i] = clock() - t0


def memcpy_time(size: str, budget_s: float = 0.3) -> dict[str, float]:
    """µs to copy a warm tensor of `size` into a warm buffer (one thread)."""
    src = make_tensor(size)
    dst = np.empty_like(src)
    return percentiles(timed_loop(lambda: np.copyto(dst, src), budget_s, min_n=5) * 1e6)


def two_copies_time(size: str, budget_s: float = 0.3) -> dict[str, float]:
    """µs for the two copies any shared-memory round trip of `size` makes: the caller's tensor into
    a buffer, and that buffer into a second one (the result written back). The floor for big tensors."""
    src = make_tensor(size)
    a = np.empty_like(src)
    b = np.empty_like(src)

    def chain() -> None:
        np.copyto(a, src)
        np.copyto(b, a)

    return percentiles(timed_loop(chain, budget_s, min_n=5) * 1e6)


def memcpy_bandwidth(mb: int = 64, reps: int = 10) -> float:
    """Best-of-`reps` GB/s of a warm `mb` MB copy."""
    src = np.ones(mb * 2**20, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(timed_loop(lambda: np.copyto(dst, src), 0.0, min_n=reps, max_n=reps, warmup=1))
    return src.nbytes / best / 1e9


class PipeEcho:
    """A child process that echoes pickled objects over `multiprocessing.Pipe`."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_children.pipe_echo, args=(child_conn,), daemon=True)
        self.proc.start()
        child_conn.close()

    def round_trip(self, x: object) -> object:
        """Send `x` and receive it back."""
        self.conn.send(x)
        return self.conn.recv()

    def close(self) -> None:
        """Stop the child."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()

    def __enter__(self) -> "PipeEcho":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pipe_round_trips(echo: PipeEcho, size: str, budget_s: float) -> dict[str, float]:
    """Round-trip µs of a float32 tensor of `size` through Pipe + pickle."""
    x = make_tensor(size)
    return percentiles(timed_loop(lambda: echo.round_trip(x), budget_s, min_n=3, warmup=2) * 1e6)


def mlp_direct(batch: int, budget_s: float = 0.5) -> float:
    """Items/s of the common MLP called in this process, no transport, at `batch` items per call."""
    from workload import IN_DIM, MLP  # the common workload; bench dir is on sys.path

    model = MLP()
    x = np.random.default_rng(1).standard_normal((batch, IN_DIM), dtype=np.float32)
    times = timed_loop(lambda: model(x), budget_s, min_n=5)
    return batch / float(np.median(times))


def python_startup(reps: int = 5) -> float:
    """Median seconds for `python -c "import numpy"` to start and exit."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import numpy"], env=child_env(), check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def idle_python_memory() -> dict[str, float]:
    """RSS/PSS/USS (MB) of an idle python that imported numpy."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import numpy, sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return memory_of(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def describe_cpu_contention() -> float:
    """1-minute load average divided by CPUs: above ~0.5 the machine was busy before we began."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)
