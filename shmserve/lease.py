"""The runtime directory, and the leases in it that say which processes are alive.

``$SHMSERVE_RUNTIME_DIR`` (default ``/tmp/shmserve-<uid>``) holds the runner
registry, the workers' Unix sockets, the metrics folders of ``shmserve
serve`` and ``leases/``. It must be a real directory (not a symlink) owned by
this user with mode 0700; anything else is refused with `RuntimeDirUnsafe`,
which says how to fix it.

A *lease* is a file ``leases/<id>.lease`` that one process keeps open with an
exclusive ``flock(2)`` for as long as it lives. The kernel drops the lock when
the process exits however it exits (SIGKILL, OOM kill, a container stopped),
and the lock means the same in every PID namespace that shares the
directory, so unlike ``kill(pid, 0)`` it is never fooled by a reused pid or
a pid from another namespace. Another process asks with a shared, non-blocking
``flock`` on its own open of the file: refused means alive, granted means dead.

`current()` is this process's lease, taken on first use; its id (16 random
hex digits) is in every ``/dev/shm`` name the process creates and in every
registry record it writes, so a sweep knows whose they are. On a clean exit
the process unlinks its remaining names and removes its lease file; after a
crash the next sweep (`shmserve.registry.sweep`) does both.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from . import settings
from .errors import RuntimeDirUnsafe

LIVE, DEAD, UNKNOWN = "live", "dead", "unknown"
SUFFIX = ".lease"
_ID = re.compile(r"^[0-9a-f]{16}$")


def runtime_dir() -> Path:
    """The runtime directory, created private to this user if missing; `RuntimeDirUnsafe` if it is not safe.

    Another local user can create ``/tmp/shmserve-<uid>`` first (``/tmp`` is
    shared); such a directory, a symlink, or one others may write to is
    refused rather than used.
    """
    path = settings.runtime_dir()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.getuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}): another user created it first"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):04o}, so other users may read or write it"
    if problem:
        fix = "remove it (as its owner or root) or " if st.st_uid != os.getuid() else \
            ("`chmod 700` it or " if not stat.S_ISLNK(st.st_mode) and stat.S_ISDIR(st.st_mode) else "remove it or ")
        raise RuntimeDirUnsafe(
            f"runtime directory {path} {problem}; shmserve keeps its registry and sockets there and needs a "
            f"directory of its own, mode 0700; {fix}set SHMSERVE_RUNTIME_DIR to a private directory "
            "(e.g. $XDG_RUNTIME_DIR/shmserve) for every shmserve process of this user"
        )
    return path


def lease_dir() -> Path:
    """``<runtime dir>/leases``, created if missing."""
    path = runtime_dir() / "leases"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return path


class Lease:
    """One process's lease: the locked file and its id. `take()` makes one; `release()` ends it."""

    def __init__(self, lease_id: str, path: Path, fd: int) -> None:
        self.id = lease_id
        self.path = path
        self.fd = fd
        self.pid = os.getpid()

    @classmethod
    def take(cls, directory: Path) -> "Lease":
        """A new lease in `directory`; its file appears under its final name only once locked."""
        while True:
            lease_id = secrets.token_hex(8)
            tmp = directory / f".{lease_id}.new"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = directory / f"{lease_id}{SUFFIX}"
            try:
                os.rename(tmp, path)
            except FileNotFoundError:  # a sweep removed the unlocked file before we locked it: again
                os.close(fd)
                continue
            return cls(lease_id, path, fd)

    def release(self) -> None:
        """Remove the file, then drop the lock (so nobody sees it unlocked under its name)."""
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1


_current: Lease | None = None
_exit_hooks: list[Callable[[str], object]] = []


def current() -> Lease:
    """This process's lease, taken on first use (a forked child takes its own)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        if _current is not None:
            os.close(_current.fd)  # the parent's: the parent keeps its lock through its own descriptor
        _current = Lease.take(lease_dir())
        atexit.register(_release_at_exit, _current)
    return _current


def at_exit(hook: Callable[[str], object]) -> None:
    """Call `hook(lease_id)` at a clean exit, just before this process's lease file goes (once per hook).

    `shmserve.shm.segment` registers the unlinking of this process's remaining names.
    """
    if hook not in _exit_hooks:
        _exit_hooks.append(hook)


def valid_id(lease_id: str) -> bool:
    """Whether `lease_id` has the form of a lease id (a name in /dev/shm may carry anything)."""
    return bool(_ID.match(lease_id))


def state(lease_id: str, directory: Path | None = None) -> str:
    """`LIVE`, `DEAD` (its file exists and nobody holds it) or `UNKNOWN` (no such lease file here)."""
    if not valid_id(lease_id):
        return UNKNOWN
    path = (directory or lease_dir()) / f"{lease_id}{SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return UNKNOWN
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return LIVE
        raise
    finally:
        os.close(fd)  # also drops our shared lock
    return DEAD


def alive(lease_id: str) -> bool:
    """Whether the process holding lease `lease_id` runs."""
    return state(lease_id) == LIVE


def dead(directory: Path | None = None) -> list[str]:
    """Ids of the leases in `directory` whose processes are gone."""
    directory = directory or lease_dir()
    out = []
    for entry in directory.glob(f"*{SUFFIX}"):
        lease_id = entry.name[: -len(SUFFIX)]
        if state(lease_id, directory) == DEAD:
            out.append(lease_id)
    return out


def remove(lease_id: str, directory: Path | None = None) -> None:
    """Delete a dead lease's file (after what it owned was swept)."""
    if valid_id(lease_id):
        ((directory or lease_dir()) / f"{lease_id}{SUFFIX}").unlink(missing_ok=True)


def sweep_unfinished(directory: Path | None = None) -> int:
    """Remove lease files a process created but never locked (killed inside `Lease.take`); how many."""
    removed = 0
    for entry in (directory or lease_dir()).glob(".*.new"):
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            entry.unlink(missing_ok=True)
            removed += 1
        except OSError:
            pass  # locked: its process is about to publish it
        finally:
            os.close(fd)
    return removed


def _release_at_exit(lease: Lease) -> None:
    if lease.pid != os.getpid():  # a forked child exiting through the parent's handlers
        return
    try:
        for hook in _exit_hooks:
            hook(lease.id)
    finally:
        lease.release()
