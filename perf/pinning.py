"""Pin processes (every thread of them) to CPUs for the length of a `with` block.

Wake-up latency between two processes depends on whether they share a CPU
(about 5 µs here) or not (about 45 µs on this VM, where an idle vCPU must be
woken). Unpinned figures flip between the two with the scheduler's mood;
pinned ones are steady, so the suite measures both.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .procs import threads


def _set(tid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except (ProcessLookupError, PermissionError, OSError):
        pass  # the thread ended, or the CPU is not ours: measure unpinned rather than fail


@contextlib.contextmanager
def pinned(cpus: tuple[int, int] | None, others: list[int]) -> Iterator[None]:
    """Pin this process to ``cpus[0]`` and the processes `others` to ``cpus[1]``; None pins nothing."""
    if cpus is None:
        yield
        return
    mine, theirs = cpus
    saved: dict[int, set[int]] = {}
    for pid, cpu in [(0, mine)] + [(p, theirs) for p in others]:
        for tid in threads(pid):
            try:
                saved[tid] = os.sched_getaffinity(tid)
            except OSError:
                continue
            _set(tid, {cpu})
    try:
        yield
    finally:
        for tid, old in saved.items():
            if Path(f"/proc/{tid}").exists():
                _set(tid, old)


def cpu_pairs() -> dict[str, tuple[int, int]]:
    """The pinnings worth measuring on this host: same CPU, and two different CPUs when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    pairs = {"samecore": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        pairs["crosscore"] = (cpus[0], cpus[1])
    return pairs
