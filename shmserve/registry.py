"""The runtime directory: which runners run where, and sweeping what crashed runs left.

``$SHMSERVE_RUNTIME_DIR`` (default ``/tmp/shmserve-<uid>``, mode 0700) holds
one ``<runner>.json`` per running runner (its supervisor pid and worker
sockets) and the workers' Unix sockets. Only the supervisor that registered a
runner writes its file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import posix_ipc

from .errors import RunnerNameClash, RunnerUnavailable
from .shm.segment import PREFIX, owner_pid

DEV_SHM = Path("/dev/shm")


def runtime_dir() -> Path:
    """The runtime directory, created private to this user if missing."""
    path = Path(os.environ.get("SHMSERVE_RUNTIME_DIR") or f"/tmp/shmserve-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid() or (st.st_mode & 0o077):
        raise PermissionError(f"runtime directory {path} must belong to this user with mode 0700; fix it or set SHMSERVE_RUNTIME_DIR")
    return path


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie — exited, not yet reaped — counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)


def register(name: str, record: dict[str, Any]) -> Path:
    """Claim runner `name` for this process; RunnerNameClash if a live process holds it."""
    path = runtime_dir() / f"{name}.json"
    data = orjson.dumps(record)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                other = orjson.loads(path.read_bytes())
                holder = int(other.get("supervisor_pid", 0))
            except (OSError, ValueError):
                holder = 0
            if holder and pid_alive(holder):
                raise RunnerNameClash(
                    f"a runner named {name!r} is already served by process {holder}; "
                    "runner names must be unique on a host (give this one another name)"
                ) from None
            path.unlink(missing_ok=True)  # left by a run that was killed
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path
    raise RunnerNameClash(f"could not claim runner name {name!r} in {path.parent}")


def update(name: str, record: dict[str, Any]) -> None:
    path = runtime_dir() / f"{name}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(record))
    os.replace(tmp, path)


def unregister(name: str) -> None:
    (runtime_dir() / f"{name}.json").unlink(missing_ok=True)


def lookup(name: str) -> dict[str, Any]:
    """The record of running runner `name`; RunnerUnavailable if none runs."""
    path = runtime_dir() / f"{name}.json"
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunnerUnavailable(
            f"no runner named {name!r} is running on this host (looked in {path.parent}); start it with shmserve.start()"
        ) from None
    if not pid_alive(int(record.get("supervisor_pid", 0))):
        raise RunnerUnavailable(f"runner {name!r} was registered by process {record.get('supervisor_pid')}, which has exited")
    return record


def sweep() -> list[str]:
    """Unlink shmserve segments and semaphores whose creating process is dead.

    Called at every start, so a run that was killed (SIGKILL, power loss of a
    container) leaves nothing behind for long. Returns the names removed.
    """
    removed: list[str] = []
    try:
        entries = list(DEV_SHM.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if PREFIX not in name:
            continue
        pid = owner_pid(name)
        if pid is None or pid_alive(pid):
            continue
        try:
            if name.startswith("sem."):
                posix_ipc.unlink_semaphore("/" + name[4:])
            else:
                posix_ipc.unlink_shared_memory("/" + name)
            removed.append(name)
        except (posix_ipc.ExistentialError, posix_ipc.PermissionsError):
            pass
    rdir = runtime_dir()
    for rec in rdir.glob("*.json"):
        try:
            holder = int(orjson.loads(rec.read_bytes()).get("supervisor_pid", 0))
        except (OSError, ValueError):
            continue
        if not pid_alive(holder):
            rec.unlink(missing_ok=True)
            removed.append(str(rec))
    return removed
