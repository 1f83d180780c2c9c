"""Named POSIX semaphores used as doorbells between processes.

A `sem_post` is a full memory barrier, so a producer that writes a
descriptor and then posts publishes it safely to a consumer that waits.
glibc only enters the kernel on post when a waiter sleeps, so posting to an
awake consumer costs an atomic increment.

Waking a sleeping process on another CPU costs ~23 µs on a virtual machine
(the idle vCPU has to be woken by the host), against ~0.3 µs for a process
that is polling. `Spinner` polls for a short, bounded while before it
sleeps, yielding the CPU between polls so a peer on the same CPU still runs,
and backs off from polling while its polls keep coming up empty.
"""
from __future__ import annotations

import os
import time

import posix_ipc

from .. import settings
from .segment import new_name


class Signal:
    """A counting semaphore: `post()` from one process, `wait()` in another."""

    def __init__(self, sem: posix_ipc.Semaphore, owner: bool) -> None:
        self._sem = sem
        self.name: str = sem.name
        self.owner = owner
        self._unlinked = False
        self._closed = False

    @classmethod
    def create(cls, name: str | None = None) -> "Signal":
        sem = posix_ipc.Semaphore(name or new_name(), posix_ipc.O_CREX, mode=0o600, initial_value=0)
        return cls(sem, owner=True)

    @classmethod
    def open(cls, name: str) -> "Signal":
        return cls(posix_ipc.Semaphore(name), owner=False)

    def post(self) -> None:
        self._sem.release()

    def try_post(self) -> bool:
        """Post unless this end was closed (its link went with a dead worker); False then."""
        try:
            self._sem.release()
            return True
        except posix_ipc.ExistentialError:
            return False

    def wait(self, timeout: float | None) -> bool:
        """Wait for a post; True if one was taken, False on timeout. timeout=0 polls."""
        try:
            self._sem.acquire(timeout)
            return True
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            # Interrupted (e.g. Ctrl-C): report no post; Python runs the signal's
            # handler (KeyboardInterrupt) as soon as we return.
            return False

    def spin(self, budget_s: float) -> bool:
        """Poll for a post for up to `budget_s`, yielding the CPU between polls; True if one was taken."""
        sem = self._sem
        end = time.monotonic() + budget_s
        while True:
            if sem.value:  # sem_getvalue and sem_trywait stay in user space
                try:
                    sem.acquire(0)
                    return True
                except posix_ipc.BusyError:
                    pass
            os.sched_yield()
            if time.monotonic() > end:
                return False

    def value(self) -> int:
        """Posts not yet taken (no syscall in glibc)."""
        return int(self._sem.value)

    def drain(self) -> int:
        """Take every pending post without blocking; returns how many.

        The count is read first (no syscall, no exception): most drains find none,
        and a refused ``acquire(0)`` costs a raised and caught `posix_ipc.BusyError`.
        """
        sem = self._sem
        n = 0
        while sem.value:
            try:
                sem.acquire(0)
            except posix_ipc.BusyError:  # another taker got it between the read and the take
                break
            n += 1
        return n

    def unlink(self) -> None:
        if self._unlinked:
            return
        self._unlinked = True
        try:
            self._sem.unlink()
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._sem.close()
            except posix_ipc.ExistentialError:
                pass


DEFAULT_SPIN_S: float = settings.VARIABLES["SHMSERVE_SPIN_US"].default


def spin_budget_s() -> float:
    """How long a waiter polls before it sleeps: `SHMSERVE_SPIN_US` (0 turns polling off), default 50 µs."""
    return settings.spin_s()


class Spinner:
    """Spin-then-sleep waits on one `Signal`, for one waiter at a time.

    A spin that comes up empty is followed by sleeping waits only: 1, then 2,
    4, ... up to `MAX_SKIP` of them before the next try, so a slow model
    costs a wasted spin once in every `MAX_SKIP` calls at most.
    """

    MAX_SKIP = 64

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.skip = 0  # sleeping waits left before the next spin
        self.backoff = 1

    def wait(self, sig: Signal, timeout: float) -> bool:
        """Like `sig.wait(timeout)`, polling first unless recent spins came up empty."""
        budget = self.budget_s
        if not budget or timeout <= 0:
            return sig.wait(timeout)
        if self.skip:
            self.skip -= 1
            return sig.wait(timeout)
        if sig.spin(min(budget, timeout)):
            self.backoff = 1
            return True
        self.skip = self.backoff
        self.backoff = min(self.backoff * 2, self.MAX_SKIP)
        return sig.wait(max(timeout - budget, 0.0))


def unlink_semaphore(name: str) -> None:
    """Remove a semaphore name if it exists."""
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass
