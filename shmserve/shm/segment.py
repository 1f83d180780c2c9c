"""POSIX shared-memory segments: creation (private, unguessable, reserved), mapping, cleanup.

Every name shmserve creates looks like ``/shmserve_<lease>_<token>``: `lease`
is the creating process's lease id (`shmserve.lease`: a later start sweeps
the names of processes whose lease is dead, in any PID namespace) and `token`
is 128 random bits (so no other user can guess it). Segments are created mode
0600 with O_EXCL, and their pages are reserved before they are mapped.
"""
from __future__ import annotations

import errno
import mmap
import os
import secrets

import posix_ipc

from .. import lease, settings
from ..errors import SharedMemoryTooSmall
from .budget import DEV_SHM, HEADROOM_MIN_BYTES, fixes

PREFIX = "shmserve_"
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux >= 5.14
PAGE = mmap.PAGESIZE


def new_name(owner: str | None = None) -> str:
    """A fresh, unguessable POSIX IPC name owned by lease `owner` (default: this process's lease).

    ``$SHMSERVE_NAME_TAG`` (up to 8 letters or digits), when set, starts the
    random part, so a test session can tell its names from other processes'.
    """
    tag = settings.name_tag()
    if owner is None:
        owner = lease.current().id
        lease.at_exit(unlink_owned_by)  # at a clean exit, whatever this process did not remove itself
    return f"/{PREFIX}{owner}_{tag}{secrets.token_hex(16)}"


def owner_lease(name: str) -> str | None:
    """The creator's lease id encoded in a shmserve name, or None for a foreign name."""
    base = name.lstrip("/")
    if base.startswith("sem."):
        base = base[4:]
    if not base.startswith(PREFIX):
        return None
    owner, _, _token = base[len(PREFIX):].partition("_")
    return owner if lease.valid_id(owner) else None


def unlink_name(entry: str) -> bool:
    """Unlink one /dev/shm entry (``sem.<name>`` for a semaphore); False if it was already gone."""
    try:
        if entry.startswith("sem."):
            posix_ipc.unlink_semaphore("/" + entry[4:])
        else:
            posix_ipc.unlink_shared_memory("/" + entry)
    except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
        return False
    return True


def owned_names() -> dict[str, list[str]]:
    """Every shmserve entry in /dev/shm, grouped by the lease id of its creator."""
    out: dict[str, list[str]] = {}
    try:
        entries = os.listdir(DEV_SHM)
    except OSError:
        return out
    for entry in entries:
        owner = owner_lease(entry)
        if owner is not None:
            out.setdefault(owner, []).append(entry)
    return out


def unlink_owned_by(lease_id: str) -> list[str]:
    """Unlink every /dev/shm name created under lease `lease_id`; returns those removed."""
    return [e for e in owned_names().get(lease_id, []) if unlink_name(e)]


def prefault(buf: mmap.mmap, offset: int = 0, length: int | None = None) -> None:
    """Map every page of `buf` writable into this process now.

    A first write into fresh shared pages runs ~8x slower than into touched
    ones, so arenas are pre-faulted once at creation, on both sides.
    """
    length = len(buf) - offset if length is None else length
    if length <= 0:
        return
    try:
        buf.madvise(_MADV_POPULATE_WRITE, offset, length)
        return
    except (OSError, ValueError):
        pass
    # Older kernels: touch one byte per page (writing the value it already holds).
    mv = memoryview(buf)
    try:
        for pos in range(offset, offset + length, PAGE):
            mv[pos] = mv[pos]
    finally:
        mv.release()


def reserve(fd: int, size: int, name: str) -> None:
    """Allocate every page of the segment behind `fd` now, or raise `SharedMemoryTooSmall`.

    ``ftruncate`` only sets a size: on a full tmpfs the first write to a page
    it cannot back kills the process with SIGBUS. ``posix_fallocate`` fails
    with ENOSPC instead, before anything is mapped.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG):
            raise
        st = os.statvfs(DEV_SHM)
        free = st.f_bavail * st.f_frsize
        at_least = (st.f_blocks - st.f_bfree) * st.f_frsize + size + HEADROOM_MIN_BYTES  # what is used, plus this
        raise SharedMemoryTooSmall(
            f"{DEV_SHM} has {free} bytes ({free / 2**20:.1f} MiB) free, too few for shared-memory segment {name} "
            f"of {size} bytes ({size / 2**20:.1f} MiB); {fixes(-(-at_least // 2**20))}"
        ) from None


class Segment:
    """One mapped POSIX shared-memory segment.

    `create()` makes a new private segment; `attach()` maps an existing one.
    `unlink()` removes the name (mappings stay valid); `close()` unmaps.
    """

    def __init__(self, name: str, buf: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.buf = buf
        self.size = len(buf)
        self.owner = owner
        self._unlinked = False

    @classmethod
    def create(cls, size: int, name: str | None = None, populate: bool = True) -> "Segment":
        name = name or new_name()
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        try:
            reserve(shm.fd, size, name)
            buf = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.unlink()
            raise
        finally:
            shm.close_fd()
        seg = cls(name, buf, owner=True)
        if populate:
            prefault(buf)
        return seg

    @classmethod
    def attach(cls, name: str, populate: bool = True) -> "Segment":
        shm = posix_ipc.SharedMemory(name)
        try:
            st = os.fstat(shm.fd)
            if st.st_uid != os.getuid() or (st.st_mode & 0o077):
                raise PermissionError(f"shared-memory segment {name} is not private to this user; refusing it")
            buf = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        seg = cls(name, buf, owner=False)
        if populate:
            prefault(buf)
        return seg

    def unlink(self) -> None:
        """Remove the name from /dev/shm; existing mappings keep working."""
        if self._unlinked:
            return
        self._unlinked = True
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        """Unmap, unless views into the segment are still alive (then it unmaps when they die)."""
        try:
            self.buf.close()
        except BufferError:
            # Leased result arrays still point into it; the mapping is released
            # when the last of them is garbage-collected.
            pass

    def __repr__(self) -> str:
        return f"<Segment {self.name} {self.size} bytes>"
