"""Named POSIX semaphores used as doorbells between processes.

A `sem_post` is a full memory barrier, so a producer that writes a
descriptor and then posts publishes it safely to a consumer that waits.
glibc only enters the kernel on post when a waiter sleeps, so posting to an
awake consumer costs an atomic increment.
"""
from __future__ import annotations

import posix_ipc

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

    def value(self) -> int:
        """Posts not yet taken (no syscall in glibc)."""
        return int(self._sem.value)

    def drain(self) -> int:
        """Take every pending post without blocking; returns how many."""
        n = 0
        while True:
            try:
                self._sem.acquire(0)
            except posix_ipc.BusyError:
                return n
            n += 1

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


def unlink_semaphore(name: str) -> None:
    """Remove a semaphore name if it exists."""
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        pass
