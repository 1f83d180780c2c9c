"""How much ``/dev/shm`` a deployment needs, and whether this host (or container) has it.

Every byte shmserve puts in ``/dev/shm`` is one of:

* a **channel segment** per (client process, runner worker) pair: one client
  process (an API worker of ``shmserve serve``, or the process that called
  ``shmserve.start()`` / ``connect()``) creates one channel to every worker of
  every runner it calls. Its size is `ChannelLayout.total` of
  `shmserve.shm.ring` (the same object that lays the segment out): a header
  page, two rings of ``DEFAULT_SLOTS`` descriptors and two arenas of
  ``arena_mb`` each;
* a **semaphore** (one tmpfs page each): a doorbell per runner worker and a
  reply semaphore per (client process, runner);
* **headroom** for what else lives there (Python's multiprocessing locks,
  the model's own libraries): `HEADROOM_FRACTION` of the rest, at least
  `HEADROOM_MIN_BYTES`.

So, with C client processes (``api_server.workers``) and runners r of W_r
workers and arena A_r MiB::

    channel(A)  = page_align(4096 + 2 x DEFAULT_SLOTS x 1024) + 2 x A MiB
    shm bytes   = sum_r C x W_r x channel(A_r)              channel segments
                + (sum_r W_r + C x runners) x 4096          semaphores
                + max(HEADROOM_MIN_BYTES, HEADROOM_FRACTION x the above)

`deployment_budget` computes it; `free_bytes` reads what the file system
has left (``statvfs``); `check` raises `SharedMemoryTooSmall` with the
numbers and the fixes. Segments also reserve their bytes when created
(``posix_fallocate`` in `shmserve.shm.segment`), so a ``/dev/shm`` that
fills later still fails with a message, never with SIGBUS.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SharedMemoryTooSmall
from .ring import DEFAULT_SLOTS, ChannelLayout

if TYPE_CHECKING:
    from ..runner import Runner

DEV_SHM = "/dev/shm"
SEMAPHORE_BYTES = 4096  # a named semaphore is a 32-byte file; tmpfs charges it one page
HEADROOM_FRACTION = 0.10
HEADROOM_MIN_BYTES = 4 * 2**20
MiB = 2**20


def channel_bytes(arena_mb: int, slots: int = DEFAULT_SLOTS) -> int:
    """Bytes of one channel segment whose two arenas are `arena_mb` MiB each."""
    arena = int(arena_mb) * MiB
    return ChannelLayout(slots, arena, arena).total


@dataclass(frozen=True)
class RunnerShm:
    """What one runner contributes to the budget: its worker count and arena size."""

    name: str
    workers: int
    arena_mb: int

    @classmethod
    def of(cls, runner: "Runner", workers: int | None = None) -> "RunnerShm":
        """The figures of a `Runner` object; `workers` overrides its count (as ``start(workers=)`` does)."""
        count = workers if workers is not None else runner.workers
        with warnings.catch_warnings():  # the supervisor's own plan warns (a CPU fallback) once, not this one
            warnings.simplefilter("ignore")
            plans = runner.strategy.plan(runner.runnable_class, count, gpus=runner.gpus)
        return cls(runner.name, len(plans), runner.arena_mb)


@dataclass(frozen=True)
class ShmBudget:
    """The ``/dev/shm`` bytes a deployment needs, by part (see the module docstring)."""

    clients: int
    runners: tuple[RunnerShm, ...]
    channels: int
    channel_bytes: int
    semaphores: int
    semaphore_bytes: int
    headroom_bytes: int

    @property
    def total_bytes(self) -> int:
        """Every part together: what ``/dev/shm`` must have free."""
        return self.channel_bytes + self.semaphore_bytes + self.headroom_bytes

    @property
    def total_mib(self) -> int:
        """`total_bytes` rounded up to whole MiB (``--shm-size=<n>m``, ``sizeLimit: <n>Mi``)."""
        return math.ceil(self.total_bytes / MiB)

    def describe(self) -> str:
        """The formula with this deployment's numbers, for messages and ``config show``."""
        parts = [f"{self.clients} client process(es) x {r.workers} worker(s) of runner {r.name!r} x "
                 f"{channel_bytes(r.arena_mb) / MiB:.1f} MiB channel (arena_mb {r.arena_mb})" for r in self.runners]
        return "; ".join(parts + [f"{self.semaphores} semaphores x 4 KiB",
                                  f"{self.headroom_bytes / MiB:.1f} MiB headroom"])


def deployment_budget(runners: Iterable[RunnerShm], clients: int) -> ShmBudget:
    """The budget of `runners` called from `clients` processes (API workers, or 1 for ``start()``)."""
    rs = tuple(runners)
    if clients < 0 or any(r.workers < 0 or r.arena_mb < 0 for r in rs):
        raise ValueError("clients, workers and arena_mb must not be negative")
    channels = sum(clients * r.workers for r in rs)
    chan = sum(clients * r.workers * channel_bytes(r.arena_mb) for r in rs)
    sems = sum(r.workers for r in rs) + clients * len(rs)
    base = chan + sems * SEMAPHORE_BYTES
    headroom = max(HEADROOM_MIN_BYTES, math.ceil(base * HEADROOM_FRACTION))
    return ShmBudget(clients, rs, channels, chan, sems, sems * SEMAPHORE_BYTES, headroom)


def runners_budget(runners: Iterable["Runner"], clients: int,
                   workers: int | dict[str, int] | None = None) -> ShmBudget:
    """`deployment_budget` for `Runner` objects (`workers` as in ``shmserve.start()``)."""
    rs = [RunnerShm.of(r, workers.get(r.name) if isinstance(workers, dict) else workers) for r in runners]
    return deployment_budget(rs, clients)


def free_bytes(path: str = DEV_SHM) -> int:
    """Bytes an unprivileged process can still write under `path` (``statvfs``)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fixes(needed_mib: int) -> str:
    """What to do when ``/dev/shm`` is too small, for every error that says so."""
    return (f"fixes: give the container more shared memory (`docker run --shm-size={needed_mib}m ...`; in "
            f"Kubernetes an emptyDir with `medium: Memory` and `sizeLimit: {needed_mib}Mi` mounted at /dev/shm), "
            "or lower the arena (Runner(arena_mb=...) or `runners.<name>.arena_mb` in shmserve.yaml; each "
            "channel holds 2 x arena_mb), or run fewer API workers or runner workers")


def check(budget: ShmBudget, path: str = DEV_SHM) -> None:
    """Raise `SharedMemoryTooSmall` when `path` has less free space than `budget` needs.

    A file system that cannot be read (no ``/dev/shm`` at all) is reported too.
    """
    try:
        free = free_bytes(path)
    except OSError as exc:
        raise SharedMemoryTooSmall(f"cannot read the free space of {path} ({exc.strerror}); shmserve needs a "
                                   f"tmpfs there with {budget.total_mib} MiB free; {fixes(budget.total_mib)}") from None
    if free < budget.total_bytes:
        raise SharedMemoryTooSmall(
            f"{path} has {free} bytes ({free / MiB:.1f} MiB) free but this deployment needs {budget.total_bytes} "
            f"bytes ({budget.total_mib} MiB): {budget.describe()}; {fixes(budget.total_mib)}"
        )
